"""The embedded Tiled server under a table read while its writer appends.

Tiled 0.2.20 hands every request thread the same DuckDB connection for table storage;
``EmbeddedTiled`` makes table requests take turns on it: one pooled connection
(``store._serialize_table_storage``) and one storage request at a time
(``store._serialize_storage_access``); the negative control removes both.
A viewer following a live scan reads the analysis tables while TiledWriter appends rows
to them: exactly this load. Each case runs in a subprocess, because without the change
the server process crashes (segmentation fault or abort) or answers 500 and loses rows
(observed here in 8 of 8 runs, one outcome per run: SIGSEGV, SIGABRT, or HTTP 500 with as
few as 7 of 101 rows stored).
"""
from __future__ import annotations

import json
import subprocess
import sys

#: rows appended one request at a time, while two threads read the whole table in a loop
N_APPENDS = 100
#: seconds a case may take (measured ~15 s with the change, under load)
CASE_TIMEOUT_S = 240

RACE = r'''
import json, os, sys, threading
from pathlib import Path
import pyarrow as pa
import txm_live.store as store

if sys.argv[2] == "without":  # Tiled's own connection sharing, neither guard
    store._serialize_table_storage = lambda catalog: None
    store._serialize_storage_access = lambda app: None
server = store.EmbeddedTiled(Path(sys.argv[1]))
table = server.client().create_appendable_table(
    schema=pa.schema([("seq_num", pa.int64()), ("value", pa.float64())]), key="rows")
n = int(sys.argv[3])
errors, reads, done = [], [0], threading.Event()

def write():
    try:
        for i in range(1, n + 1):
            table.append_partition(0, pa.table({"seq_num": [i], "value": [float(i)]}))
    except Exception as exc:
        errors.append(f"append: {exc!r}"[:300])
    finally:
        done.set()

def read():
    reader = server.client()["rows"]
    try:
        while not done.is_set():
            reader.read()
            reads[0] += 1
    except Exception as exc:
        errors.append(f"read: {exc!r}"[:300])

threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
rows = server.client()["rows"].read()
print(json.dumps({"rows": sorted(int(v) for v in rows["seq_num"]), "reads": reads[0], "errors": errors}),
      flush=True)
os._exit(0)  # the outcome is printed; do not wait on a server that may be wedged
'''


def _race(tmp_path, mode: str):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    try:
        proc = subprocess.run([sys.executable, str(script), str(tmp_path / mode), mode, str(N_APPENDS)],
                              capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else None)


def test_table_reads_while_the_writer_appends_keep_the_server_up_and_every_row(tmp_path):
    returncode, outcome = _race(tmp_path, "with")
    assert returncode == 0 and outcome is not None, (returncode, outcome)
    assert outcome["errors"] == []
    assert outcome["rows"] == list(range(1, N_APPENDS + 1))
    assert outcome["reads"] >= 10  # the readers really ran alongside (measured ~200 reads)


def test_negative_control_tileds_shared_connection_crashes_or_loses_rows(tmp_path):
    returncode, outcome = _race(tmp_path, "without")
    crashed = returncode is None or returncode != 0 or outcome is None
    assert crashed or outcome["errors"] or outcome["rows"] != list(range(1, N_APPENDS + 1)), outcome

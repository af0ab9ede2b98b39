"""Commands that used to mislead, and access to the served catalog.

Expected outcomes, asserted:

* ``txm-live serve`` on a folder without a catalog refuses (exit 2) and names the path
  and ``--create``; it creates nothing.
* ``txm-live serve --port P`` with P taken names the port (exit 2).
* A dead ``--tiled`` address ends in one line naming it (exit 2), not a traceback.
* The served catalog refuses requests without its API key (401) or with a wrong one,
  listens on 127.0.0.1 only, keeps its key across restarts; a server that died leaves a
  stale address that :func:`connect` explains.
* An unusable preview folder costs the previews, never the analysis run.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from bluesky import RunEngine

from reliability_helpers import ENERGIES, final_maps, make_beamline, xanes_plan
from txm_live.store import API_KEY_FILE, TiledUnavailable, connect
from txm_live.store_process import TiledServerProcess, free_port


def _txm_live(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "txm_live.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_serve_refuses_a_folder_without_a_catalog(tmp_path):
    typo = tmp_path / "txm-live-dta"
    result = _txm_live("serve", typo)
    assert result.returncode == 2
    assert f"no catalog in '{typo}'" in result.stderr and f"txm-live serve {typo} --create" in result.stderr
    assert not typo.exists()


def test_serve_names_a_busy_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _txm_live("serve", tmp_path / "data", "--create", "--port", port)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dead_tiled_address_is_named_in_one_line(tmp_path):
    port = free_port()
    result = _txm_live("replay", "some-run-uid", "--tiled", f"http://127.0.0.1:{port}/api/v1", "--no-progress")
    assert result.returncode == 2
    assert result.stderr.startswith(f"txm-live replay: no Tiled server answers at http://127.0.0.1:{port}/api/v1/")
    assert "Traceback" not in result.stderr


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_served_catalog_needs_its_key_listens_on_loopback_and_keeps_the_key(tmp_path):
    server = TiledServerProcess(tmp_path / "data", create=True).start()
    try:
        key = (server.catalog / API_KEY_FILE).read_text().strip()
        metadata = f"{server.base_uri}/metadata/"
        assert httpx.get(metadata).status_code == 401
        assert httpx.get(metadata, headers={"Authorization": "Apikey not-the-key"}).status_code == 401
        assert httpx.get(metadata, headers={"Authorization": f"Apikey {key}"}).status_code == 200
        assert _listening_addresses(server.port) == {"127.0.0.1"}
        assert server.client().context.api_key == key

        server.kill()  # no clean-up: its address file stays behind
        with pytest.raises(TiledUnavailable, match="stopped without cleaning up"):
            connect(server.catalog)
        server.start()  # no --create needed now; same port, same key
        assert "--create" not in server.args and server.client().context.api_key == key
    finally:
        server.stop()


def test_an_unusable_preview_folder_costs_the_previews_not_the_analysis(tmp_path):
    from txm_live.callbacks import subscribe_live_analysis

    not_a_folder = tmp_path / "previews"
    not_a_folder.write_text("a file where the preview folder should be")
    RE = RunEngine({}, call_returns_result=False)
    docs = []
    with pytest.warns(RuntimeWarning, match=f"previews cannot be written to {not_a_folder}"):
        live = subscribe_live_analysis(RE, None, preview_dir=not_a_folder, sinks=[lambda n, d: docs.append((n, d))])
        RE(xanes_plan(make_beamline(tmp_path / "frames")))
        assert live.wait(300)
    stop = [d for n, d in docs if n == "stop"][-1]
    assert stop["exit_status"] == "success", stop["reason"]
    assert final_maps(docs)["n_energies"] == len(ENERGIES)

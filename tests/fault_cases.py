"""The fault and bad-input cases: every way a scan can end, bad input, EPICS and storage faults.

Shared by ``benchmarks/fault_suite.py`` (runs every case and prints the table, cases tried,
cases passed and documents lost) and ``tests/test_fault_suite.py`` (a fast representative
subset under pytest). Everything is real: a RunEngine, the simulated TXM's ophyd devices
writing HDF5, the live analysis, an embedded Tiled server over HTTP on 127.0.0.1 and, for
the EPICS cases, the simulated TXM's Channel Access IOC in a subprocess.

Each :class:`Case` states its expected outcome in words and asserts it; a case passes when
its function returns an :class:`Outcome` and fails on the first assertion that does not
hold (the assertion's message is what was observed). ``known_failure`` marks a case that
shows a defect not fixed here, with the reason: it is run, and reported as failed, all the
same. "Documents lost" is what the case wrote (raw documents, frames) minus what is found
again afterwards (in Tiled, or on disk).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import signal
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: Energies of every scan here: 12 energies (2 pre-edge, 7 across the edge, 3 post-edge).
ENERGY_STEPS_EV = {"pre_edge_step_ev": 25.0, "near_edge_step_ev": 5.0, "post_edge_step_ev": 40.0}
#: Frame size of the simulated detector, px (small: the whole suite runs in minutes).
SHAPE = (64, 64)
N_DARKS = 2
#: Sample frame (1-based) at which interruptions are injected.
INTERRUPT_AT = 4
#: How long the live analysis and the writer get to finish a run, s.
SETTLE_S = 120.0


def scan_energies():
    from txm_live.energies import xanes_energy_list

    return xanes_energy_list(8333.0, **ENERGY_STEPS_EV)


# ------------------------------------------------------------------------------ the table
@dataclass
class Outcome:
    """What a case saw, in words (documents written and found are tallied on the context)."""

    observed: str


@dataclass(frozen=True)
class Case:
    """One fault or bad input: its name, group, expected outcome and the function that checks it."""

    name: str
    group: str
    expected: str
    check: Callable[["FaultContext"], Outcome]
    known_failure: str | None = None
    needs: tuple[str, ...] = ()       # 'ioc', 'reliability'


@dataclass
class Result:
    case: Case
    passed: bool
    observed: str
    written: int
    found: int
    seconds: float

    @property
    def lost(self) -> int:
        return self.written - self.found

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        return "KNOWN FAILURE" if self.case.known_failure else "FAIL"


def run_case(case: Case, ctx: "FaultContext") -> Result:
    """Run one case; an assertion that does not hold, or any exception, fails it (with the message)."""
    t0 = time.monotonic()
    ctx.written = ctx.found = 0
    try:
        passed, observed = True, case.check(ctx).observed
    except AssertionError as exc:
        passed, observed = False, f"assertion failed: {exc}"
    except Exception as exc:  # a traceback instead of a message is itself a failure
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        passed, observed = False, (f"unexpected {type(exc).__name__}: {exc} "
                                   f"({Path(tb.filename).name}:{tb.lineno})")
    finally:
        ctx.cleanup()
    return Result(case, passed, observed, ctx.written, ctx.found, time.monotonic() - t0)


# ------------------------------------------------------------------------- shared context
class FaultContext:
    """What the cases share: a Tiled server, its frame folder, a work folder and (lazily) an IOC.

    Parameters
    ----------
    tiled_server : txm_live.store.EmbeddedTiled
        Its ``frames_dir`` attribute is the readable detector folder.
    work_dir : path
        Scratch space (copies of files to damage).
    ioc : simulators.ioc.IOCProcess, optional
        The simulated TXM IOC on this process's Channel Access ports; cases that kill it
        start it again before they return.
    """

    def __init__(self, tiled_server, work_dir, *, ioc=None):
        self.tiled = tiled_server
        self.frames_dir = Path(tiled_server.frames_dir)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ioc = ioc
        self._reference = None
        self._cleanups: list[Callable] = []
        #: Raw documents and frames the current case wrote, and how many of them were found again.
        self.written = 0
        self.found = 0

    def tally(self, written: int, found: int) -> None:
        self.written += int(written)
        self.found += int(found)

    def client(self):
        return self.tiled.client()

    def on_cleanup(self, fn: Callable) -> None:
        self._cleanups.append(fn)

    def cleanup(self) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception:  # cleaning up after a case must not hide the next case
                traceback.print_exc()

    def reference_run(self) -> "RecordedRun":
        """One normal scan's documents and file, recorded once (bad-input cases alter copies)."""
        if self._reference is None:
            session = Session(self)
            (uid,) = session.RE(session.plan())
            session.settle()
            self._reference = RecordedRun(uid, session.docs_of(uid), session)
            session.close()
        return self._reference


@dataclass
class RecordedRun:
    uid: str
    docs: list
    session: "Session"

    def file_path(self) -> Path:
        from txm_live.callbacks._frames import path_from_uri

        (uri,) = {doc["uri"] for name, doc in self.docs if name == "stream_resource"}
        return Path(path_from_uri(uri))


class Session:
    """One RunEngine with a Tiled writer and the live analysis subscribed, as the profile does."""

    def __init__(self, ctx: FaultContext, *, seed: int = 1, config_overrides: dict | None = None,
                 **live_options):
        from bluesky import RunEngine

        from simulators.beamline import make_sim_beamline
        from simulators.model import SimConfig
        from txm_live.callbacks import subscribe_live_analysis
        from txm_live.store import subscribe_tiled_writer

        self.ctx = ctx
        self.client = ctx.client()
        self.RE = RunEngine({}, call_returns_result=False)
        self.writer = subscribe_tiled_writer(self.RE, self.client, batch_size=50)
        self.live = subscribe_live_analysis(self.RE, self.client, writer=self.writer, **live_options)
        self.docs: list = []
        self.RE.subscribe(lambda name, doc: self.docs.append((name, copy.deepcopy(doc))))
        config = SimConfig(shape=SHAPE, seed=seed, **(config_overrides or {}))
        self.bl = make_sim_beamline(ctx.frames_dir, config=config)

    def plan(self, **options):
        from txm_live.plans import xanes_2d

        kwargs = {"n_darks": N_DARKS, **options}
        energies = kwargs.pop("energies_ev", scan_energies())
        return xanes_2d(self.bl.detector, self.bl.energy, energies, shutter=self.bl.shutter,
                        sample_stage=self.bl.sample_stage, **kwargs)

    def settle(self) -> None:
        assert self.live.wait(SETTLE_S), "the live analysis did not finish in time"
        assert self.writer.flush(SETTLE_S), "the Tiled writer did not finish in time"
        assert self.writer.failures == [], f"Tiled writer failures: {self.writer.failures}"

    def docs_of(self, uid: str) -> list:
        out, inside = [], False
        for name, doc in self.docs:
            if name == "start":
                inside = doc["uid"] == uid
            if inside:
                out.append((name, doc))
            if name == "stop" and inside:
                inside = False
        return out

    def close(self) -> None:
        self.live.close(self.RE)

    # ---- what the checks look at -------------------------------------------------------
    def raw_survived(self, uid: str) -> tuple[int, int]:
        """Raw documents emitted (start, events, stop) vs found in Tiled; frames readable."""
        written, found = self._raw_survived(uid)
        self.ctx.tally(written, found)
        assert found == written, f"raw run {uid[:8]}: {written - found} of {written} documents not found in Tiled"
        return written, found

    def _raw_survived(self, uid: str) -> tuple[int, int]:
        docs = self.docs_of(uid)
        streams = {doc["uid"]: doc["name"] for name, doc in docs if name == "descriptor"}
        emitted = Counter(streams[doc["descriptor"]] for name, doc in docs if name == "event")
        written = 2 + sum(emitted.values())
        if uid not in self.client:
            return written, 0
        run = self.client[uid]
        found = int(bool(run.metadata.get("start"))) + int(bool(run.metadata.get("stop")))
        for stream, n in emitted.items():
            if stream not in run:
                continue
            rows = run[stream].base["internal"].read()["seq_num"].tolist()
            frames = run[stream][self.bl.detector.image_key].read()  # each event's frame reads back
            found += min(len(rows), len(frames), n)
        return written, found

    def analysis_of(self, uid: str) -> tuple[dict, dict]:
        """The analysis run's stop document and status row (from Tiled)."""
        from txm_live.replay import find_analysis_runs

        runs = find_analysis_runs(self.client, uid)
        assert len(runs) == 1, f"raw run {uid[:8]} has {len(runs)} analysis runs in Tiled, expected 1"
        (run,) = runs.values()
        stop = run.metadata.get("stop")
        assert stop, "the analysis run was never closed (no stop document)"
        status = {k: v.values[0] for k, v in run["status"].read().items()}
        return stop, status

    def normal_scan_succeeds(self) -> str:
        """The next scan on the same RunEngine completes, and so does its analysis."""
        assert self.RE.state == "idle", f"the RunEngine is {self.RE.state!r} after the fault"
        (uid,) = self.RE(self.plan())
        self.settle()
        self.raw_survived(uid)
        stop, status = self.analysis_of(uid)
        raw_stop = self.client[uid].metadata["stop"]
        assert raw_stop["exit_status"] == "success", f"next scan ended {raw_stop['exit_status']!r}"
        assert stop["exit_status"] == "success" and not status["partial"], (
            f"next scan's analysis: {stop['exit_status']!r}, {stop['reason']}")
        return uid


def _at_sample_frame(session: Session, n: int, action: Callable[[], None]) -> Callable[[], None]:
    """Call ``action()`` from a thread while the ``n``-th sample frame is being taken; returns undo."""
    detector = session.bl.detector
    original = detector.trigger
    seen = {"n": 0}

    def trigger(*args, **kwargs):
        status = original(*args, **kwargs)
        if detector.frame_type.get() == "sample":
            seen["n"] += 1
            if seen["n"] == n:
                threading.Thread(target=action, daemon=True).start()
                time.sleep(0.3)  # the request reaches the RunEngine before this frame completes
        return status

    def restore():
        if "trigger" in vars(detector):
            del detector.trigger

    detector.trigger = trigger
    session.ctx.on_cleanup(restore)
    return restore


def _ctrl_c(times: int) -> Callable[[], None]:
    def press():
        for i in range(times):
            if i:
                time.sleep(0.3)  # bluesky counts presses ≥ 0.1 s apart
            os.kill(os.getpid(), signal.SIGINT)
    return press


# ------------------------------------------------------------------------- run-end cases
def _run_end_case(*, interrupt: str, then: str | None, raw_status: str, complete: bool):
    """A xanes_2d scan interrupted at the 4th sample frame, then ``then`` (resume/stop/abort/halt)."""
    from bluesky.utils import PlanHalt, RequestAbort, RunEngineInterrupted

    def check(ctx: FaultContext) -> Outcome:
        session = Session(ctx)
        actions = {"stop": session.RE.stop, "abort": session.RE.abort, "halt": session.RE.halt,
                   "pause": lambda: session.RE.request_pause(defer=False),
                   "ctrl-c": _ctrl_c(1), "ctrl-c x2": _ctrl_c(2)}
        restore = _at_sample_frame(session, INTERRUPT_AT, actions[interrupt])
        raised = "returned"
        try:
            session.RE(session.plan())
        except RunEngineInterrupted:
            raised = "RE() paused"
        except (RequestAbort, PlanHalt) as exc:  # RE.abort()/halt() from another thread re-raise these
            raised = f"RE() raised {type(exc).__name__}"
        if session.RE.state == "paused":
            assert then is not None, "the RunEngine paused, but this case expected it to end"
            getattr(session.RE, then)()
        assert session.RE.state == "idle", f"RunEngine left {session.RE.state!r}"
        (uid,) = [doc["uid"] for name, doc in session.docs if name == "start"]
        session.settle()
        raw_stop = session.client[uid].metadata["stop"]
        assert raw_stop["exit_status"] == raw_status, (
            f"raw run ended {raw_stop['exit_status']!r}, expected {raw_status!r}")
        session.raw_survived(uid)
        stop, status = session.analysis_of(uid)
        assert status["raw_exit_status"] == raw_status, f"status row says raw {status['raw_exit_status']!r}"
        assert stop["exit_status"] == raw_status, (
            f"analysis run closed {stop['exit_status']!r}, expected {raw_status!r}: {stop['reason']}")
        assert bool(status["partial"]) == (not complete), f"partial={status['partial']}, complete={complete}"
        restore()
        session.normal_scan_succeeds()
        session.close()
        return Outcome(f"raw {raw_status}, analysis {stop['exit_status']} "
                       f"({status['n_frames']}/{status['n_frames_planned']} frames"
                       f"{', partial' if status['partial'] else ''}); "
                       f"{raised}; next scan success")

    return check


def run_end_cases() -> list[Case]:
    rows = [
        ("RE.stop() mid-scan", "stop", None, "success", False),
        ("RE.abort() mid-scan", "abort", None, "abort", False),
        ("RE.halt() mid-scan", "halt", None, "abort", False),
        ("pause, then resume", "pause", "resume", "success", True),
        ("pause, then stop", "pause", "stop", "success", False),
        ("pause, then abort", "pause", "abort", "abort", False),
        ("pause, then halt", "pause", "halt", "abort", False),
        ("one Ctrl-C, then resume", "ctrl-c", "resume", "success", True),
        ("one Ctrl-C, then stop", "ctrl-c", "stop", "success", False),
        ("two Ctrl-C, then abort", "ctrl-c x2", "abort", "abort", False),
        ("two Ctrl-C, then resume", "ctrl-c x2", "resume", "success", True),
    ]
    cases = []
    for name, interrupt, then, raw_status, complete in rows:
        result = "all frames analysed" if complete else "partial result"
        expected = (f"raw run '{raw_status}', every event in Tiled with its frame; analysis run closed "
                    f"'{raw_status}' ({result}); next scan succeeds")
        cases.append(Case(f"xanes_2d: {name}", "run end", expected,
                          _run_end_case(interrupt=interrupt, then=then, raw_status=raw_status,
                                        complete=complete)))
    return cases


# ---------------------------------------------------------------------------- all cases
def all_cases() -> list[Case]:
    """Every case, in the order the suite runs them."""
    return [*run_end_cases()]

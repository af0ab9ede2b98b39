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
SETTLE_S = 300.0


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
    fixed: str | None = None          # the defect this case found, fixed on the faults branch


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
    timed : bool
        Also assert how long things take (the suite's script; tests assert behaviour only).
    """

    def __init__(self, tiled_server, work_dir, *, ioc=None, timed: bool = False):
        self.tiled = tiled_server
        self.frames_dir = Path(tiled_server.frames_dir)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ioc = ioc
        self.timed = bool(timed)
        self._reference = None
        self._cleanups: list[Callable] = []
        self._shutdowns: list[Callable] = []
        #: Raw documents and frames the current case wrote, and how many of them were found again.
        self.written = 0
        self.found = 0

    def tally(self, written: int, found: int) -> None:
        self.written += int(written)
        self.found += int(found)

    def client(self):
        return self.tiled.client()

    def on_cleanup(self, fn: Callable) -> None:
        """Run ``fn`` when the current case ends."""
        self._cleanups.append(fn)

    def on_shutdown(self, fn: Callable) -> None:
        """Run ``fn`` when the suite ends (:meth:`shutdown`): processes the cases share."""
        self._shutdowns.append(fn)

    def shutdown(self) -> None:
        while self._shutdowns:
            try:
                self._shutdowns.pop()()
            except Exception:
                traceback.print_exc()

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
            session.raw_survived(uid)  # counted with the first case that uses it
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
                 client=None, frames_dir=None, writer_options: dict | None = None, live: bool = True,
                 model=None, **live_options):
        from bluesky import RunEngine

        from simulators.beamline import make_sim_beamline
        from simulators.model import SimConfig
        from txm_live.callbacks import subscribe_live_analysis
        from txm_live.store import subscribe_tiled_writer

        self.ctx = ctx
        self.client = client if client is not None else ctx.client()
        self.RE = RunEngine({}, call_returns_result=False)
        self.writer = subscribe_tiled_writer(self.RE, self.client, **{"batch_size": 50, **(writer_options or {})})
        self.live = (subscribe_live_analysis(self.RE, self.client, writer=self.writer, **live_options)
                     if live else None)
        self.docs: list = []
        self.RE.subscribe(lambda name, doc: self.docs.append((name, copy.deepcopy(doc))))
        config = SimConfig(shape=SHAPE, seed=seed, **(config_overrides or {}))
        self.bl = make_sim_beamline(frames_dir or ctx.frames_dir, config=None if model else config, model=model)

    def plan(self, **options):
        from txm_live.plans import xanes_2d

        kwargs = {"n_darks": N_DARKS, **options}
        energies = kwargs.pop("energies_ev", scan_energies())
        return xanes_2d(self.bl.detector, self.bl.energy, energies, shutter=self.bl.shutter,
                        sample_stage=self.bl.sample_stage, **kwargs)

    @property
    def image_key(self) -> str:
        return self.bl.detector.image_key

    def settle(self, *, outage: bool = False) -> None:
        """Wait for the analysis and the writer; without an ``outage`` the writer must not have failed."""
        if self.live is not None:
            assert self.live.wait(SETTLE_S), "the live analysis did not finish in time"
        delivered = getattr(self.writer, "wait_delivered", self.writer.flush)  # spooling writers deliver later
        assert delivered(SETTLE_S), f"the Tiled writer did not deliver in time: {self.writer.failures[-3:]}"
        if not outage:
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
        if self.live is not None:
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
            if self.image_key in run[stream].base:  # each event's frame reads back
                rows = rows[:len(run[stream][self.image_key].read())]
            found += min(len(rows), n)
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


def check_count_paused_then_aborted(ctx: FaultContext) -> Outcome:
    """bluesky's ``count`` of the camera (no live analysis for it): paused mid-way, then aborted."""
    from bluesky import plans as bp
    from bluesky.utils import RunEngineInterrupted

    session = Session(ctx)
    detector = session.bl.detector
    restore = _at_sample_frame(session, 3, lambda: session.RE.request_pause(defer=False))
    try:
        session.RE(bp.count([detector], num=6))
    except RunEngineInterrupted:
        pass
    assert session.RE.state == "paused", f"RunEngine {session.RE.state!r} after the pause request"
    session.RE.abort("aborted by the fault suite")
    restore()
    (uid,) = [doc["uid"] for name, doc in session.docs if name == "start"]
    session.settle()
    raw_stop = session.client[uid].metadata["stop"]
    assert raw_stop["exit_status"] == "abort", f"raw run closed {raw_stop['exit_status']!r}"
    session.raw_survived(uid)
    assert uid not in session.live.analysis_uids, "a count got a XANES analysis"
    session.normal_scan_succeeds()
    return Outcome("raw 'abort' with every event in Tiled, no analysis run (not a XANES scan); next xanes_2d "
                   "scan success")


def _operando_case(*, interrupt: str, then: str | None, raw_status: str):
    """An operando session (a cell charging, 2D XANES every 600 s of cell time) interrupted in its
    second measurement, then ``then``; every raw run kept, each measurement's analysis closed."""
    from bluesky.utils import PlanHalt, RequestAbort, RunEngineInterrupted

    def check(ctx: FaultContext) -> Outcome:
        from simulators.devices import make_sim_potentiostat
        from simulators.model import SimConfig, SimTXM
        from simulators.phantom import make_nmc_phantom
        from txm_live.plans import CyclingStep, operando

        phantom = make_nmc_phantom(n_particles=6, radius_range_um=(3.0, 5.0), seed=3, state_of_charge=0.0)
        session = Session(ctx, model=SimTXM(SimConfig(shape=SHAPE, seed=3), sample=phantom))
        pstat = make_sim_potentiostat(session.bl.model, session.bl.clock, seed=3)
        actions = {"stop": session.RE.stop, "pause": lambda: session.RE.request_pause(defer=False)}
        n_energies = len(scan_energies())
        restore = _at_sample_frame(session, n_energies + 2, actions[interrupt])
        plan = operando(session.bl.detector, session.bl.energy, scan_energies(), potentiostat=pstat,
                        shutter=session.bl.shutter, sample_stage=session.bl.sample_stage,
                        protocol=[CyclingStep.charge(1.0, voltage_max_v=4.3)], measure_every_s=600.0,
                        record_every_s=120.0, xanes_options={"n_darks": 1})
        try:
            session.RE(plan)
        except (RunEngineInterrupted, RequestAbort, PlanHalt):
            pass
        if session.RE.state == "paused":
            getattr(session.RE, then)()
        restore()
        assert session.RE.state == "idle", f"RunEngine left {session.RE.state!r}"
        session.settle()
        starts = [doc for name, doc in session.docs if name == "start"]
        stops = {doc["run_start"]: doc for name, doc in session.docs if name == "stop"}
        measurements = [doc["uid"] for doc in starts if doc.get("scan_type") == "xanes2d"]
        assert len(measurements) >= 2, f"{len(measurements)} measurements before the interruption"
        for doc in starts:
            session.raw_survived(doc["uid"])
        second = measurements[1]
        assert stops[second]["exit_status"] == raw_status, (
            f"the interrupted measurement closed {stops[second]['exit_status']!r}, expected {raw_status!r}")
        for uid in measurements:
            stop, status = session.analysis_of(uid)
            assert stop["exit_status"] == stops[uid]["exit_status"], (
                f"measurement {uid[:8]}: raw {stops[uid]['exit_status']!r}, analysis {stop['exit_status']!r}")
        session.normal_scan_succeeds()
        return Outcome(f"{len(starts)} raw runs ({len(measurements)} measurements) all in Tiled; interrupted "
                       f"measurement '{stops[second]['exit_status']}', each analysis closed as its raw run; "
                       "next xanes_2d scan success")

    return check


STOPPED_FIX = ("a stopped scan (raw 'success', 3 of 12 energies) had its analysis run closed 'fail' with a "
               "fit error; now a partial result closed 'success'")


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
        fixed = STOPPED_FIX if "stop" in (interrupt, then) else None
        cases.append(Case(f"xanes_2d: {name}", "run end", expected,
                          _run_end_case(interrupt=interrupt, then=then, raw_status=raw_status,
                                        complete=complete), fixed=fixed))
    for name, interrupt, then, raw_status in [("RE.stop() mid-measurement", "stop", None, "success"),
                                              ("pause, then abort", "pause", "abort", "abort"),
                                              ("pause, then resume", "pause", "resume", "success")]:
        cases.append(Case(f"operando: {name}", "run end",
                          f"every raw run (measurements and cycling) in Tiled; the interrupted measurement closed "
                          f"'{raw_status}' and each measurement's analysis as its raw run; next xanes_2d scan succeeds",
                          _operando_case(interrupt=interrupt, then=then, raw_status=raw_status)))
    cases.append(Case("count: pause, then abort", "run end",
                      "raw run 'abort' with every event in Tiled; no analysis run (not a XANES scan); the next "
                      "xanes_2d scan succeeds", check_count_paused_then_aborted))
    return cases


# ---------------------------------------------------------------------------- all cases
def all_cases() -> list[Case]:
    """Every case, in the order the suite runs them."""
    return [*run_end_cases(), *bad_input_cases(), *epics_cases(), *storage_cases()]


# ---------------------------------------------------------------------- bad-input cases
@dataclass
class Analysed:
    """The analysis run the live analysis made of a document stream (no Tiled involved)."""

    stop: dict
    status: dict
    maps: dict | None
    analysis: object

    @property
    def said(self) -> str:
        """Everything the analysis run says about what it could not do."""
        return "\n".join([self.stop.get("reason", ""), str(self.status.get("errors", "")),
                          str(self.status.get("notes", ""))])


def analyse(docs) -> Analysed:
    """Feed raw documents to a fresh :class:`~txm_live.callbacks.LiveAnalysis`; collect its run."""
    from txm_live.callbacks import LiveAnalysis

    out: list = []
    live = LiveAnalysis(None, sinks=[lambda name, doc: out.append((name, doc))], keep_runs=1)
    try:
        for name, doc in docs:
            live(name, doc)
        assert live.wait(SETTLE_S), "the live analysis did not finish in time"
    finally:
        live.close()
    assert live.failures == [], f"the live analysis itself failed: {live.failures}"
    streams = {doc["uid"]: doc["name"] for name, doc in out if name == "descriptor"}
    rows: dict = {}
    for name, doc in out:
        if name == "event":
            rows.setdefault(streams[doc["descriptor"]], []).append(doc["data"])
    (stop,) = [doc for name, doc in out if name == "stop"]
    (status,) = rows["status"]
    maps = rows["maps"][-1] if "maps" in rows else None
    (analysis,) = live.analyses.values()
    return Analysed(stop, status, maps, analysis)


def _without_stream(docs, stream: str):
    """The documents of a run without one stream (its descriptor, events and frame references)."""
    descriptors = {doc["uid"] for name, doc in docs if name == "descriptor" and doc["name"] == stream}
    resources = set()
    for name, doc in docs:
        if name == "stream_resource" and doc["data_key"] and any(
                doc["uid"] == ev_doc.get("stream_resource") for n, ev_doc in docs if n == "stream_datum"
                and ev_doc["descriptor"] in descriptors):
            resources.add(doc["uid"])
    return [(name, doc) for name, doc in docs
            if not (name == "descriptor" and doc["uid"] in descriptors)
            and not (name in ("event", "stream_datum") and doc["descriptor"] in descriptors)
            and not (name == "stream_resource" and doc["uid"] in resources)]


def _with_uri(docs, new_path: Path):
    out = []
    for name, doc in docs:
        if name == "stream_resource":
            doc = {**doc, "uri": new_path.as_uri()}
        out.append((name, doc))
    return out


def check_no_flats(ctx: FaultContext) -> Outcome:
    ref = ctx.reference_run()
    result = analyse(_without_stream(ref.docs, "flat"))
    assert result.stop["exit_status"] == "fail", f"analysis closed {result.stop['exit_status']!r}"
    assert "flat" in str(result.status["errors"]), f"errors do not name the flats: {result.status['errors']!r}"
    return Outcome(f"analysis 'fail': {result.status['errors']}")


def check_no_darks(ctx: FaultContext) -> Outcome:
    ref = ctx.reference_run()
    result = analyse(_without_stream(ref.docs, "dark"))
    assert "dark" in str(result.status["notes"]).lower(), (
        f"nothing said about the missing darks: notes {result.status['notes']!r}, stop {result.stop['reason']!r}")
    return Outcome(f"analysis {result.stop['exit_status']!r}; notes: {result.status['notes']}")


def check_start_energies_disagree(ctx: FaultContext) -> Outcome:
    """A start document whose energies are not those the frames were taken at."""
    ref = ctx.reference_run()
    docs = [(name, {**doc, "energies_ev": [e + 7.0 for e in doc["energies_ev"]]} if name == "start" else doc)
            for name, doc in ref.docs]
    result = analyse(docs)
    assert result.stop["exit_status"] == "fail", f"analysis closed {result.stop['exit_status']!r}"
    errors = str(result.status["errors"])
    assert "eV" in errors and "start document" in errors, f"errors: {errors!r}"
    return Outcome(f"analysis 'fail': {errors}")


def check_file_missing(ctx: FaultContext) -> Outcome:
    ref = ctx.reference_run()
    missing = ctx.work_dir / "moved-away" / ref.file_path().name
    result = analyse(_with_uri(ref.docs, missing))
    assert result.stop["exit_status"] == "fail", f"analysis closed {result.stop['exit_status']!r}"
    errors = str(result.status["errors"])
    assert str(missing) in errors, f"errors do not name the missing file: {errors!r}"
    return Outcome(f"analysis 'fail': {errors[:200]}")


def check_file_truncated(ctx: FaultContext) -> Outcome:
    ref = ctx.reference_run()
    damaged = ctx.work_dir / f"truncated-{ref.file_path().name}"
    shutil.copyfile(ref.file_path(), damaged)
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:
        f.truncate(size // 2)
    result = analyse(_with_uri(ref.docs, damaged))
    errors = str(result.status["errors"])
    assert result.stop["exit_status"] == "fail", (
        f"analysis closed {result.stop['exit_status']!r} on a file cut to half its size; errors {errors!r}")
    assert str(damaged) in errors and "truncat" in errors.lower(), f"errors: {errors!r}"
    return Outcome(f"analysis 'fail': {errors[:200]}")


def _alter_frames(session: Session, frame_types: tuple[str, ...], alter: Callable[[np.ndarray], np.ndarray]):
    """Frames of these types come off the simulated camera altered by ``alter`` (a copy)."""
    model, detector = session.bl.model, session.bl.detector
    original = model.acquire

    def acquire(**kwargs):
        frame = original(**kwargs)
        if detector.frame_type.get() in frame_types:
            frame = dataclasses.replace(frame, image=alter(frame.image.copy()))
        return frame

    model.acquire = acquire


#: Rows of the frame a bad-input case spoils (a band across the sample).
BAD_ROWS = slice(28, 36)


def _live_scan(session: Session, **plan_options) -> tuple[str, dict, dict]:
    """One scan with the live analysis; the raw run must succeed whatever the analysis thinks."""
    (uid,) = session.RE(session.plan(**plan_options))
    session.settle()
    session.raw_survived(uid)
    raw_stop = session.client[uid].metadata["stop"]
    assert raw_stop["exit_status"] == "success", f"the scan ended {raw_stop['exit_status']!r}"
    stop, status = session.analysis_of(uid)
    return uid, stop, status


def _final_mask(session: Session, uid: str) -> np.ndarray:
    from txm_live.replay import find_analysis_runs

    (run,) = find_analysis_runs(session.client, uid).values()
    return np.asarray(run["maps"]["mask"].read()[-1]).astype(bool)


def _saturated_band(frame_types):
    def check(ctx: FaultContext) -> Outcome:
        session = Session(ctx)

        def clip(image):
            image[BAD_ROWS] = np.iinfo(image.dtype).max
            return image

        _alter_frames(session, frame_types, clip)
        uid, stop, status = _live_scan(session)
        notes = f"{status['notes']}\n{status.get('quality_warnings', '')}".strip()
        assert stop["exit_status"] == "success", f"analysis closed {stop['exit_status']!r}: {stop['reason']}"
        assert "saturat" in notes.lower(), f"nothing said about saturation: notes {notes!r}"
        mask = _final_mask(session, uid)
        inside = mask[BAD_ROWS.start + 2:BAD_ROWS.stop - 2]  # registration moves rows by < 2 px here
        assert not inside.any(), f"{int(inside.sum())} saturated pixels are in the maps' mask"
        assert mask.sum() > 0.3 * mask.size, f"the rest of the map is lost too: mask holds {int(mask.sum())} px"
        session.normal_scan_succeeds()
        return Outcome(f"analysis success; band masked (mask keeps {int(mask.sum())} px); notes: {notes}")
    return check


def check_dead_pixels(ctx: FaultContext) -> Outcome:
    """1 % dead pixels (no response to light): masked, or filled from their neighbours, never wild."""
    session = Session(ctx, config_overrides={"dead_pixel_fraction": 0.01})
    dead = np.zeros(SHAPE, bool)
    dead[session.bl.model.detector.dead_pixels] = True
    uid, stop, status = _live_scan(session)
    assert stop["exit_status"] == "success", f"analysis closed {stop['exit_status']!r}: {stop['reason']}"
    from txm_live.replay import find_analysis_runs

    (run,) = find_analysis_runs(session.client, uid).values()
    whiteline = np.asarray(run["maps"]["whiteline"].read()[-1])
    mask = _final_mask(session, uid)
    truth = session.bl.model.truth_maps()
    error = np.abs(whiteline - truth.whiteline_ev)
    others = mask & truth.mask & ~dead
    kept_dead = mask & truth.mask & dead
    typical = float(np.nanpercentile(error[others], 99))
    worst = float(np.nanmax(error[kept_dead])) if kept_dead.any() else 0.0
    assert others.sum() > 0.5 * truth.mask.sum(), f"mask keeps {int(others.sum())} of {int(truth.mask.sum())} px"
    assert worst <= typical, f"a dead pixel's whiteline is {worst:.2f} eV off (99 % of the others: {typical:.2f})"
    return Outcome(f"analysis success; of {int(dead.sum())} dead pixels {int((mask & dead).sum())} kept "
                   f"(filled from neighbours, worst {worst:.2f} eV off; 99 % of the others within {typical:.2f} eV)")


def check_shutter_never_opens(ctx: FaultContext) -> Outcome:
    """Every frame dark (the shutter never opened): nothing to analyse, and the scan goes on."""
    session = Session(ctx)
    original = session.bl.model.acquire
    session.bl.model.acquire = lambda **kwargs: original(**{**kwargs, "shutter_open": False})
    uid, stop, status = _live_scan(session)
    errors = str(status["errors"])
    assert stop["exit_status"] == "fail", f"analysis closed {stop['exit_status']!r}: {stop['reason']}"
    assert "flat" in errors and "dark" in errors, f"errors do not say what is wrong: {errors!r}"
    session.bl.model.acquire = original
    session.normal_scan_succeeds()
    return Outcome(f"raw success, analysis 'fail': {errors}; next scan success")


def check_broken_sink(ctx: FaultContext) -> Outcome:
    """A sink of the live analysis that raises on every document."""
    def broken(name, doc):
        raise OSError("disk full (test)")

    session = Session(ctx, sinks=[broken])
    uid, stop, status = _live_scan(session)
    assert stop["exit_status"] == "success", f"analysis closed {stop['exit_status']!r}"
    failures = session.live.failures
    assert failures and all("disk full (test)" in f for f in failures), f"failures: {failures[:2]}"
    session.normal_scan_succeeds()
    return Outcome(f"raw and analysis success; {len(failures)} sink failures recorded: {failures[0][:80]}")


def check_unusable_preview_folder(ctx: FaultContext) -> Outcome:
    blocker = ctx.work_dir / "not-a-folder"
    blocker.write_text("a file where the preview folder should be\n")
    session = Session(ctx, preview_dir=blocker / "previews")
    uid, stop, status = _live_scan(session)
    assert stop["exit_status"] == "success", f"analysis closed {stop['exit_status']!r}: {stop['reason']}"
    assert session.live.failures == [], f"failures: {session.live.failures}"
    notes = str(status["notes"])
    assert "previews" in notes and str(blocker) in notes, f"notes: {notes!r}"
    mask = _final_mask(session, uid)
    assert mask.sum() > 0.3 * mask.size, f"maps missing: mask holds {int(mask.sum())} px"
    return Outcome(f"raw and analysis success, maps in Tiled; notes: {notes}")


def _whiteline_rms(session: Session, uid: str) -> tuple[float, int]:
    from txm_live.replay import find_analysis_runs

    (run,) = find_analysis_runs(session.client, uid).values()
    whiteline = np.asarray(run["maps"]["whiteline"].read()[-1])
    truth = session.bl.model.truth_maps()
    inside = _final_mask(session, uid) & truth.mask
    assert inside.sum() > 0.5 * truth.mask.sum(), f"mask keeps {int(inside.sum())} of {int(truth.mask.sum())} px"
    return float(np.sqrt(np.mean((whiteline[inside] - truth.whiteline_ev[inside]) ** 2))), int(inside.sum())


def check_non_monotonic_energies(ctx: FaultContext) -> Outcome:
    """Energies in a shuffled order (scan_order='as_given'): maps as good as the ordered scan's."""
    energies = scan_energies()
    order = np.random.default_rng(3).permutation(len(energies))
    session = Session(ctx, seed=2)
    uid, stop, status = _live_scan(session, energies_ev=energies[order], scan_order="as_given")
    assert stop["exit_status"] == "success", f"analysis closed {stop['exit_status']!r}: {stop['reason']}"
    shuffled, n = _whiteline_rms(session, uid)
    reference = Session(ctx, seed=2)
    ordered, _ = _whiteline_rms(reference, _live_scan(reference)[0])
    # achieved: 0.57 eV shuffled vs 0.5-0.6 eV ordered (5 eV steps, 64², same sample and seed)
    assert shuffled <= WHITELINE_RMS_RATIO * ordered, (
        f"whiteline RMS {shuffled:.2f} eV shuffled vs {ordered:.2f} eV in order")
    return Outcome(f"analysis success; whiteline RMS vs truth {shuffled:.2f} eV shuffled, {ordered:.2f} eV "
                   f"in order ({n} px)")


#: A shuffled scan's whiteline RMS (vs truth) may exceed the ordered scan's by this factor.
WHITELINE_RMS_RATIO = 1.5


check_saturated_flats = _saturated_band(("flat",))
check_saturated_sample_frames = _saturated_band(("sample",))


# ------------------------------------------------------------- bad input at the plan
def _refused(options: dict, must_say: str):
    """The plan refuses ``options`` with a message saying ``must_say``, before anything moves."""
    def check(ctx: FaultContext) -> Outcome:
        session = Session(ctx)
        position = session.bl.energy.position
        try:
            session.RE(session.plan(**options))
        except ValueError as exc:
            message = str(exc)
        else:
            raise AssertionError("the plan ran")
        assert must_say in message, f"the message {message!r} does not say {must_say!r}"
        assert not [doc for name, doc in session.docs if name == "start"], "a run was started"
        assert session.bl.energy.position == position, "the monochromator moved"
        session.normal_scan_succeeds()
        return Outcome(f"ValueError before any run or move: {message}; next scan success")
    return check


def _energies_with_duplicate():
    energies = list(scan_energies())
    return energies + [energies[4]]


def _energies_with_nan():
    return list(scan_energies()) + [float("nan")]


# ---------------------------------------------------------- bad input at the analysis layer
def _simulated_frames(ctx: FaultContext):
    """Labelled raw frames of one 2D XANES scan straight from the simulator (no RunEngine)."""
    from simulators.model import SimConfig, SimTXM
    from txm_live.analysis import FrameLabel, XanesScanLayout

    if getattr(ctx, "_sim_frames", None) is None:
        model = SimTXM(SimConfig(shape=SHAPE, seed=4))
        energies = np.sort(scan_energies())[::-1]
        frames = []
        for r in range(N_DARKS):
            zp, det = model.config.optics.focus_positions(energies[0])
            frames.append((FrameLabel("dark", -1, r), model.acquire(
                energy_ev=energies[0], zp_z_mm=zp, det_z_mm=det, shutter_open=False).image))
        for i, energy in enumerate(energies):
            zp, det = model.config.optics.focus_positions(energy)
            frames.append((FrameLabel("sample", i, 0), model.acquire(energy_ev=energy, zp_z_mm=zp,
                                                                      det_z_mm=det).image))
            frames.append((FrameLabel("flat", i, 0), model.acquire(energy_ev=energy, zp_z_mm=zp, det_z_mm=det,
                                                                    sample_x_um=100.0).image))
        ctx._sim_frames = (XanesScanLayout(energies, n_darks=N_DARKS), frames, model)
    return ctx._sim_frames


def _pipeline(layout, frames):
    from txm_live.analysis import Xanes2DPipeline

    pipe = Xanes2DPipeline(layout)
    for label, image in frames:
        pipe.add_frame(label, image)
    pipe.finish()
    return pipe


def _pipeline_maps(layout, frames):
    pipe = _pipeline(layout, frames)
    return pipe, pipe.fit_final()


#: Share of the pixels outside the spoiled rows whose mask must be as in the clean run.
MASK_AGREEMENT = 0.93
#: The energy index whose sample frame a bad-frame case spoils.
BAD_ENERGY_INDEX = 5


def _bad_frame(value: float, *, whole: bool):
    def check(ctx: FaultContext) -> Outcome:
        layout, frames, model = _simulated_frames(ctx)
        _, clean = _pipeline_maps(layout, frames)
        spoiled = []
        for label, image in frames:
            if label.frame_type == "sample" and label.energy_index == BAD_ENERGY_INDEX:
                image = image.astype(np.float32)  # a float frame (e.g. from another program's file)
                image[slice(None) if whole else BAD_ROWS] = value
            spoiled.append((label, image))
        pipe, maps = _pipeline_maps(layout, spoiled)
        said = "\n".join(pipe.notes)
        if whole:  # the other energies still give maps, but the analysis must say what it lost
            assert f"energy_index={BAD_ENERGY_INDEX}" in said and "0% of its pixels" in said, f"notes: {said!r}"
            assert maps.mask.any(), "no maps from the other energies"
            return Outcome(f"maps from the other energies; notes: {said}")
        rows = slice(BAD_ROWS.start + 2, BAD_ROWS.stop - 2)
        assert not maps.mask[rows].any(), f"{int(maps.mask[rows].sum())} spoiled pixels are in the mask"
        outside = np.ones(SHAPE, bool)
        outside[BAD_ROWS.start - 3:BAD_ROWS.stop + 3] = False
        agree = (maps.mask == clean.mask)[outside].mean()
        # achieved 99.2 % (NaN rows) and 95.4 % (inf rows: registration 0.28 px off at that energy)
        assert agree > MASK_AGREEMENT, f"the mask outside the spoiled rows: {agree:.1%} as in the clean run"
        return Outcome(f"maps computed; spoiled rows masked; {agree:.1%} of the other pixels as in the clean run")
    return check


def check_shift_beyond_search_range(ctx: FaultContext) -> Outcome:
    """The sample jumps by 60 % of the field between two energies (phase correlation sees ±50 %)."""
    from simulators.model import SimTXM

    layout, frames, _ = _simulated_frames(ctx)
    model = SimTXM(dataclasses.replace(_simulated_frames(ctx)[2].config))
    jump_um = JUMP_FRACTION_OF_FIELD * SHAPE[1] * model.pixel_size_nm / 1000.0
    moved = []
    for label, image in frames:
        if label.frame_type == "sample" and label.energy_index == BAD_ENERGY_INDEX:
            energy = layout.energies_ev[label.energy_index]
            zp, det = model.config.optics.focus_positions(energy)
            image = model.acquire(energy_ev=energy, zp_z_mm=zp, det_z_mm=det, sample_x_um=jump_um).image
        moved.append((label, image))
    pipe = _pipeline(layout, moved)
    try:
        pipe.fit_final()
        final = "final maps computed"
    except ValueError as exc:  # the misplaced frame can spoil the mean spectrum the fit is planned on
        final = f"final maps failed: {exc}"
    said = "\n".join(pipe.notes + list(getattr(pipe, "quality_warnings", [])))
    assert f"energy_index={BAD_ENERGY_INDEX}" in said and "registration" in said.lower(), (
        f"nothing said about the frame registration could not place (shift found "
        f"{np.round(pipe.shifts[BAD_ENERGY_INDEX], 1).tolist()} px for a {jump_um:.0f} µm jump; {final}); "
        f"notes {said!r}")
    return Outcome(f"notes: {said}")


#: How far the sample jumps in the shift-beyond-range case, as a fraction of the field of view.
JUMP_FRACTION_OF_FIELD = 0.6


WHOLE_FRAME_FIX = "a frame with no finite pixel changed the maps silently; now noted, naming the frame"
SATURATION_FIX = None  # found here; fixed on main in parallel (test_analysis_quality.py), not by this branch


def bad_input_cases() -> list[Case]:
    analysis_says = "a clear message naming the problem"
    return [
        Case("NaN pixels in a frame", "bad input",
             "maps computed; the NaN rows are masked; elsewhere the mask is as in the clean run (>93 %)",
             _bad_frame(float("nan"), whole=False)),
        Case("inf pixels in a frame", "bad input",
             "maps computed; the inf rows are masked; elsewhere the mask is as in the clean run (>93 %)",
             _bad_frame(float("inf"), whole=False)),
        Case("a frame all NaN", "bad input",
             "maps from the other energies; the notes name the frame and that none of it was finite",
             _bad_frame(float("nan"), whole=True), fixed=WHOLE_FRAME_FIX),
        Case("a frame all inf", "bad input",
             "maps from the other energies; the notes name the frame and that none of it was finite",
             _bad_frame(float("inf"), whole=True), fixed=WHOLE_FRAME_FIX),
        Case("saturated flats (live)", "bad input",
             "scan success; analysis success with the saturated band masked and a note saying so; next scan succeeds",
             check_saturated_flats, fixed=SATURATION_FIX),
        Case("saturated sample frames (live)", "bad input",
             "scan success; analysis success with the saturated band masked and a note saying so; next scan succeeds",
             check_saturated_sample_frames, fixed=SATURATION_FIX),
        Case("1 % dead pixels (live)", "bad input",
             "scan and analysis success; dead pixels masked or filled from neighbours (never worse than 99 % of "
             "the other pixels against the truth)", check_dead_pixels),
        Case("shutter never opens (live)", "bad input",
             f"scan success; analysis closed 'fail' with {analysis_says} (flat no brighter than dark); "
             "next scan succeeds", check_shutter_never_opens,
             fixed="all-dark frames gave maps of noise closed 'success'; now a flat no brighter than the dark "
                   "fails the analysis with a message naming the cause"),
        Case("non-monotonic energies (live)", "bad input",
             "scan and analysis success; whiteline RMS vs truth within 1.5x of the same scan in order",
             check_non_monotonic_energies),
        Case("duplicate energies", "bad input",
             "ValueError naming the repeated energy before any run starts or anything moves; next scan succeeds",
             _refused({"energies_ev": _energies_with_duplicate()}, "repeats energies")),
        Case("a NaN energy", "bad input",
             "ValueError naming the non-finite energy before any run starts; next scan succeeds",
             _refused({"energies_ev": _energies_with_nan()}, "non-finite")),
        Case("wrong energies in md", "bad input",
             "ValueError: md may not set energies_ev, before any run starts; next scan succeeds",
             _refused({"md": {"energies_ev": [8000.0, 8100.0]}}, "energies_ev")),
        Case("start energies disagree with frames", "bad input",
             f"analysis closed 'fail' with {analysis_says} (both energies)", check_start_energies_disagree),
        Case("run without flats", "bad input", f"analysis closed 'fail' with {analysis_says} (no flats)",
             check_no_flats),
        Case("run without darks", "bad input",
             "analysis success, and its notes say the darks are missing and what was assumed", check_no_darks,
             fixed="missing darks were replaced by 0 counts silently; now noted"),
        Case("detector file missing", "bad input",
             f"analysis closed 'fail' with {analysis_says}, naming the file", check_file_missing),
        Case("detector file truncated", "bad input",
             f"analysis closed 'fail' with {analysis_says}: the file named as truncated",
             check_file_truncated),
        Case("registration shift beyond search range", "bad input",
             "the notes name the frame whose shift registration could not find",
             check_shift_beyond_search_range),
        Case("a sink of the live analysis raises", "analysis",
             "scan and analysis success; the failures are recorded; next scan succeeds", check_broken_sink),
        Case("preview folder unusable", "analysis",
             "scan and analysis success, maps in Tiled; the notes say why previews are not written",
             check_unusable_preview_folder,
             fixed="an unusable preview folder lost the analysis run (fixed in preview.py as on the reliability "
                   "branch); the analysis run's notes now say why previews are missing"),
    ]


# ------------------------------------------------------------------------------- EPICS
class EpicsSession(Session):
    """A RunEngine, Tiled writer and live analysis driving the EPICS devices of the simulated IOC."""

    def __init__(self, ctx: FaultContext, **live_options):
        from bluesky import RunEngine

        from txm_live.callbacks import subscribe_live_analysis
        from txm_live.devices.txm import connect_epics_txm, make_epics_txm
        from txm_live.store import subscribe_tiled_writer

        assert ctx.ioc is not None, "no IOC in this context"
        self.ctx = ctx
        self.client = ctx.client()
        self.RE = RunEngine({}, call_returns_result=False)
        self.writer = subscribe_tiled_writer(self.RE, self.client, batch_size=50)
        self.live = subscribe_live_analysis(self.RE, self.client, writer=self.writer, **live_options)
        self.docs = []
        self.RE.subscribe(lambda name, doc: self.docs.append((name, copy.deepcopy(doc))))
        ctx.ioc.reset()
        self.devices = make_epics_txm(ctx.ioc.prefixes, write_dir=ctx.frames_dir)
        connect_epics_txm(self.devices, timeout_s=30.0)
        self.detector = self.devices["txm_det"]

    def plan(self, **options):
        from txm_live.plans import xanes_2d

        d = self.devices
        return xanes_2d(d["txm_det"], d["energy"], scan_energies(), shutter=d["shutter"],
                        sample_stage=d["sample_stage"], n_darks=N_DARKS, exposure_s=0.05, **options)

    @property
    def image_key(self) -> str:
        return self.detector.image_key


def check_pv_never_connects(ctx: FaultContext) -> Outcome:
    from txm_live.devices.pv_names import TXMPrefixes
    from txm_live.devices.txm import connect_epics_txm, make_epics_txm

    prefixes = TXMPrefixes().with_root("NO-SUCH-IOC:")
    devices = make_epics_txm(prefixes, write_dir=ctx.frames_dir)
    t0 = time.monotonic()
    try:
        connect_epics_txm({"energy": devices["energy"]}, timeout_s=PV_TIMEOUT_S)
    except ConnectionError as exc:
        message = str(exc)
    else:
        raise AssertionError("connected to PVs no IOC serves")
    waited = time.monotonic() - t0
    assert "NO-SUCH-IOC:" in message and "did not connect" in message, f"message: {message!r}"
    if ctx.timed:  # timing is checked by the suite's script only (tests assert behaviour)
        assert waited < PV_TIMEOUT_S + 3.0, f"took {waited:.1f} s for a {PV_TIMEOUT_S} s timeout"
    return Outcome(f"ConnectionError after {waited:.1f} s: {message[:160]}")


#: How long the EPICS devices may take to reconnect to a restarted IOC, s (pyepics searches
#: again with back-off: 49 s measured here on a loaded machine).
RECONNECT_TIMEOUT_S = 180.0
#: Connection timeout of the PV-never-connects case, s.
PV_TIMEOUT_S = 2.0


def check_ioc_killed_mid_scan(ctx: FaultContext) -> Outcome:
    from txm_live.devices.txm import connect_epics_txm

    session = EpicsSession(ctx)
    detector = session.detector
    original = detector.trigger
    seen = {"n": 0}

    def trigger(*args, **kwargs):
        status = original(*args, **kwargs)
        if detector.frame_type.get() == "sample":
            seen["n"] += 1
            if seen["n"] == INTERRUPT_AT:
                ctx.ioc.kill()  # as a crash would: mid-frame
        return status

    detector.trigger = trigger
    t0 = time.monotonic()
    try:
        session.RE(session.plan())
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
    else:
        raise AssertionError("the scan completed with its IOC killed")
    failed_after = time.monotonic() - t0
    del detector.trigger
    assert session.RE.state == "idle", f"RunEngine {session.RE.state!r}"
    (uid,) = [doc["uid"] for name, doc in session.docs if name == "start"]
    session.settle()
    raw_stop = session.client[uid].metadata.get("stop") or {}
    assert raw_stop.get("exit_status") == "fail", f"raw run closed {raw_stop.get('exit_status')!r}"
    session.raw_survived(uid)
    stop, status = session.analysis_of(uid)
    assert stop["exit_status"] == "fail" and status["raw_exit_status"] == "fail", (
        f"analysis closed {stop['exit_status']!r}: {stop['reason']}")
    ctx.after_ioc_kill = session  # the restart case goes on from here
    return Outcome(f"RE raised after {failed_after:.1f} s: {message[:240]}; raw run 'fail' with every event "
                   f"in Tiled; analysis closed 'fail' ({status['n_frames']} frames)")


def check_ioc_restarted(ctx: FaultContext) -> Outcome:
    """After the IOC was killed mid-scan: start it again, reconnect, and scan."""
    from txm_live.devices.txm import connect_epics_txm

    session = getattr(ctx, "after_ioc_kill", None)
    assert session is not None, "runs after 'IOC killed mid-scan'"
    ctx.after_ioc_kill = None
    t0 = time.monotonic()
    if not ctx.ioc.running:
        ctx.ioc.start()
    connect_epics_txm(session.devices, timeout_s=RECONNECT_TIMEOUT_S)
    reconnected = time.monotonic() - t0
    try:  # the RunEngine's unstage at the failure met a dead IOC: ophyd refuses to stage again
        session.RE(session.plan())
    except Exception as exc:
        refusal = f"{type(exc).__name__}: {exc}"
    else:
        refusal = ""
    assert not refusal or "unstaging again" in refusal, f"the next scan failed: {refusal}"
    assert not [doc for name, doc in session.docs[-3:] if name == "start"] or not refusal
    session.detector.unstage()  # what ophyd's message asks for
    session.normal_scan_succeeds()
    said = f"first refused: {refusal[-110:]}; " if refusal else ""
    return Outcome(f"reconnected {reconnected:.1f} s after restart; {said}after txm_det.unstage() the next "
                   "scan and its analysis succeed")


def epics_cases() -> list[Case]:
    return [
        Case("a PV that never connects", "EPICS",
             f"ConnectionError naming the PVs, within {PV_TIMEOUT_S:g} s (+3 s) of the timeout asked for",
             check_pv_never_connects),
        Case("IOC killed mid-scan", "EPICS",
             "RunEngine fails with an error naming an unreachable PV; raw run closed 'fail' with every event "
             "and frame written so far in Tiled; analysis closed 'fail'", check_ioc_killed_mid_scan, needs=("ioc",)),
        Case("IOC restarted", "EPICS",
             "devices reconnect; a scan refused by ophyd's 'unstage again' message, or none; after unstage() the "
             "next scan and its analysis succeed", check_ioc_restarted, needs=("ioc",)),
    ]


# ------------------------------------------------------ storage and the analysis service
#: How long Tiled stays down in the outage case, s.
OUTAGE_S = 5.0


def _reliability_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("txm_live.store_process") is not None


class _QuickClientRetries:
    """Tiled's client retries a failed request for 20-45 s: two quick tries make the outage reach
    the writer's spool, the path under test (tiled reads these when a request fails)."""

    def __enter__(self):
        import tiled.client.utils as utils

        self._saved = utils.TILED_RETRY_ATTEMPTS, utils.TILED_RETRY_TIMEOUT
        utils.TILED_RETRY_ATTEMPTS, utils.TILED_RETRY_TIMEOUT = 2, 2.0
        return self

    def __exit__(self, *exc):
        import tiled.client.utils as utils

        utils.TILED_RETRY_ATTEMPTS, utils.TILED_RETRY_TIMEOUT = self._saved


def _tiled_process(ctx: FaultContext):
    """A ``txm-live serve`` subprocess for the cases that kill Tiled (started once, restarted as needed)."""
    from txm_live.store_process import TiledServerProcess

    server = getattr(ctx, "tiled_process", None)
    if server is None:
        server = ctx.tiled_process = TiledServerProcess(ctx.work_dir / "served", create=True).start()
        ctx.on_shutdown(server.stop)
    if not server.alive:
        server.start()
    return server


def _seq_nums(run, stream: str) -> list[int]:
    return sorted(int(s) for s in run[stream].base["internal"].read(columns=["seq_num"])["seq_num"])


def check_tiled_killed_and_restarted(ctx: FaultContext) -> Outcome:
    server = _tiled_process(ctx)
    with _QuickClientRetries():
        session = Session(ctx, client=server.client(), frames_dir=server.frames / "outage",
                          writer_options={"spool_directory": ctx.work_dir / "spool", "retry_interval_s": 1.0})
        log = {}

        def kill_at_third_energy(name, doc):  # on the RunEngine's thread: the scan is surely running
            if doc["seq_num"] != 3 or "killed" in log:
                return
            assert session.writer.flush(60)
            server.kill()
            log["killed"] = time.monotonic()
            threading.Timer(OUTAGE_S, lambda: (server.start(), log.setdefault("restarted", time.monotonic()))).start()

        session.RE.subscribe(kill_at_third_energy, "event")
        (uid,) = session.RE(session.plan())
        scan_done = time.monotonic()
        session.settle(outage=True)
    assert "restarted" in log, "Tiled was not restarted"
    assert scan_done > log["killed"], "the scan ended before the outage"
    client = server.client()
    session.client = client
    run = client[uid]
    assert run.metadata["stop"]["exit_status"] == "success", "raw run not complete in Tiled"
    emitted = Counter(doc["descriptor"] for name, doc in session.docs_of(uid) if name == "event")
    streams = {doc["uid"]: doc["name"] for name, doc in session.docs_of(uid) if name == "descriptor"}
    for descriptor, n in emitted.items():
        seq = _seq_nums(run, streams[descriptor])
        assert seq == list(range(1, n + 1)), f"{streams[descriptor]}: stored seq_nums {seq} for {n} events"
    session.raw_survived(uid)
    stop, status = session.analysis_of(uid)
    assert stop["exit_status"] == "success", f"analysis run closed {stop['exit_status']!r}: {stop['reason']}"
    spooled = sum("spool" in f for f in session.writer.failures)
    return Outcome(f"Tiled down {log['restarted'] - log['killed']:.1f} s mid-scan; raw run complete, each event "
                   f"once; analysis run success; {spooled} writer messages about the spool")


def _remote(ctx: FaultContext):
    from txm_live.store_process import AnalysisServiceProcess, ProxyProcess

    remote = getattr(ctx, "remote", None)
    if remote is None:
        logs = ctx.work_dir / "remote"
        logs.mkdir(parents=True, exist_ok=True)
        proxy = ProxyProcess(log_path=logs / "proxy.log").start()
        service = AnalysisServiceProcess(proxy.out_address, ctx.tiled.uri, log_path=logs / "service.log",
                                         options=["--spool", logs / "spool"]).start()
        remote = ctx.remote = {"proxy": proxy, "service": service}
        ctx.on_shutdown(service.stop)
        ctx.on_shutdown(proxy.stop)
    return remote["proxy"], remote["service"]


def _wait_for_analysis_runs(client, uid: str, *, timeout_s: float = SETTLE_S) -> dict:
    from txm_live.replay import find_analysis_runs

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = find_analysis_runs(client, uid)
        if runs and all("stop" in run.metadata for run in runs.values()):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"no closed analysis run of {uid[:8]} within {timeout_s:g} s")


def _published_session(ctx: FaultContext, proxy, *, seed: int) -> Session:
    from txm_live.remote import DocumentPublisher

    session = Session(ctx, seed=seed, live=False)
    publisher = DocumentPublisher(proxy.in_address)
    assert publisher.wait_for_subscriber(60), "the analysis service did not subscribe"
    session.RE.subscribe(publisher)
    ctx.on_cleanup(publisher.close)
    return session


def check_analysis_service_killed_and_restarted(ctx: FaultContext) -> Outcome:
    import subprocess
    import sys

    proxy, service = _remote(ctx)
    if not service.alive:
        service.start()
    session = _published_session(ctx, proxy, seed=5)
    client = session.client
    started: list = []
    session.RE.subscribe(lambda name, doc: started.append(doc["uid"]), "start")

    def kill_service():  # once the service has begun this run's analysis run: it is half written
        from txm_live.replay import find_analysis_runs

        deadline = time.monotonic() + 60
        while not find_analysis_runs(client, started[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        service.kill()

    _at_sample_frame(session, INTERRUPT_AT, kill_service)
    (uid_a,) = session.RE(session.plan())
    session.settle()
    session.raw_survived(uid_a)
    assert not service.alive, "the service was not killed"
    service.start()  # adopts its orphaned spool: the half analysis run is closed
    later = _published_session(ctx, proxy, seed=6)
    (uid_b,) = later.RE(later.plan())
    later.settle()
    later.raw_survived(uid_b)
    (run_b,) = _wait_for_analysis_runs(client, uid_b).values()
    assert run_b.metadata["stop"]["exit_status"] == "success", f"next run's analysis: {run_b.metadata['stop']}"
    (half,) = _wait_for_analysis_runs(client, uid_a).values()
    half_stop = half.metadata["stop"]
    assert half_stop["exit_status"] == "abort", f"half analysis run closed {half_stop['exit_status']!r}"
    replayed = subprocess.run([sys.executable, "-m", "txm_live.cli", "replay", uid_a, "--tiled", ctx.tiled.uri,
                               "--no-progress"], capture_output=True, text=True, timeout=SETTLE_S)
    assert replayed.returncode == 0, f"replay failed: {replayed.stderr[-300:]}"
    runs = _wait_for_analysis_runs(client, uid_a)
    full = [r for r in runs.values() if r.metadata["start"].get("replay")]
    assert len(full) == 1 and full[0].metadata["stop"]["exit_status"] == "success", "replay's analysis run"
    return Outcome(f"half analysis run closed 'abort' ({half_stop['reason'][:90]}); next run analysed 'success'; "
                   "`txm-live replay UID` gives the missed run's analysis 'success'")


def storage_cases() -> list[Case]:
    if not _reliability_available():
        return []
    return [
        Case("Tiled killed and restarted mid-scan", "storage",
             f"scan goes on; Tiled back after {OUTAGE_S:g} s: raw run complete in Tiled, each event once; its "
             "analysis run closed 'success'", check_tiled_killed_and_restarted, needs=("reliability",)),
        Case("serve-analysis killed and restarted", "storage",
             "scan success, raw run complete; the half analysis run closed 'abort' after the restart; next run "
             "analysed 'success'; `txm-live replay` gives the missed analysis", check_analysis_service_killed_and_restarted,
             needs=("reliability",)),
    ]

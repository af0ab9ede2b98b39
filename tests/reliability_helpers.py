"""Shared pieces of the storage / 0MQ tests: a short edge scan and checks on stored runs."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

#: 19 energies across the Ni K edge: enough for pre-edge, whiteline and post-edge (final maps)
ENERGIES = np.r_[8273.0, 8293.0, 8313.0, 8323.0, np.arange(8328.0, 8353.0, 2.0), 8363.0, 8383.0, 8413.0]
N_DARKS = 2


def make_beamline(frames_dir, *, seed: int = 1, realistic_timing: bool = False, size: int = 128):
    from simulators.beamline import make_sim_beamline
    from simulators.model import SimConfig

    return make_sim_beamline(Path(frames_dir), config=SimConfig(shape=(size, size), seed=seed),
                             realistic_timing=realistic_timing)


def xanes_plan(bl, energies=ENERGIES, **kwargs):
    from txm_live.plans import xanes_2d

    kwargs.setdefault("n_darks", N_DARKS)
    return xanes_2d(bl.detector, bl.energy, energies, shutter=bl.shutter, sample_stage=bl.sample_stage, **kwargs)


def final_maps(documents) -> dict:
    """The final maps event's data from a list of analysis ``(name, doc)``."""
    descriptors = {d["uid"]: d["name"] for n, d in documents if n == "descriptor"}
    finals = [d["data"] for n, d in documents
              if n == "event" and descriptors[d["descriptor"]] == "maps" and d["data"]["final"]]
    assert len(finals) == 1, f"expected one final maps event, found {len(finals)}"
    return finals[0]


def stored_seq_nums(run, stream: str) -> list[int]:
    return sorted(int(s) for s in run[stream].base["internal"].read(columns=["seq_num"])["seq_num"])


def assert_raw_run_complete(run, frame_files) -> dict:
    """Every stream of a stored raw run holds each event once and every frame the files hold.

    Returns ``{stream: n_events}``.
    """
    counts = {}
    datasets = {"dark": "/entry/data/dark", "flat": "/entry/data/flat", "primary": "/entry/data/sample"}
    for stream, dataset in datasets.items():
        n_frames = 0
        for path in frame_files:
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                n_frames += f[dataset].shape[0]
        seq = stored_seq_nums(run, stream)
        assert seq == list(range(1, n_frames + 1)), f"{stream}: stored seq_nums {seq}, {n_frames} frames on disk"
        assert run[stream].base["txm_det_image"].shape[0] == n_frames
        counts[stream] = n_frames
    return counts


def analysis_runs(client, raw_uid: str) -> dict:
    from txm_live.replay import find_analysis_runs

    return find_analysis_runs(client, raw_uid)


@pytest.fixture
def short_client_retries(monkeypatch):
    """Tiled's client retries a failed request for ~20-45 s (TILED_RETRY_ATTEMPTS /
    TILED_RETRY_TIMEOUT, read when tiled is imported): that alone bridges short outages.
    Two quick attempts make every outage in a test reach the spool, the path under test."""
    import tiled.client.utils

    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 2.0)

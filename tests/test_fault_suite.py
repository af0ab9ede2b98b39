"""A representative part of the fault and bad-input suite (``benchmarks/fault_suite.py`` runs it all).

The cases live in ``tests/fault_cases.py``; each states its expected outcome and asserts it
against real parts (RunEngine, simulated TXM writing HDF5, live analysis, the session's Tiled
server over HTTP). Here: a stopped scan (its analysis is a partial result, not a failure),
saturated flats, a run without darks and one without flats, a frame with no finite pixel and
a PV that never connects. Every case must pass and lose no document.
"""
from __future__ import annotations

import pytest

import fault_cases

FAST = ["xanes_2d: RE.stop() mid-scan", "saturated flats (live)", "run without darks", "run without flats",
        "a frame all NaN", "a PV that never connects"]
CASES = {case.name: case for case in fault_cases.all_cases()}


@pytest.fixture(scope="module")
def ctx(tiled_server, tmp_path_factory):
    context = fault_cases.FaultContext(tiled_server, tmp_path_factory.mktemp("faults"))
    yield context
    context.shutdown()


def test_the_suite_has_at_least_30_cases_each_with_an_expected_outcome():
    assert len(CASES) >= 30
    assert all(len(case.expected) > 20 for case in CASES.values())
    assert all(case.known_failure is None or len(case.known_failure) > 20 for case in CASES.values())


@pytest.mark.parametrize("name", FAST)
def test_case(ctx, name):
    result = fault_cases.run_case(CASES[name], ctx)
    assert result.passed, result.observed
    assert result.lost == 0


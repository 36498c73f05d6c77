"""Measuring that notices: a disturbed stretch of a profile run is detected and measured
again; a stable block stops timing early; an implausible calibration is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from archsearch.candidate import sample_many
from archsearch.cost.latency import (
    ImplausibleCalibrationError,
    LatencyTable,
    MeasureSettings,
    SentinelMonitor,
    SentinelSettings,
    _backends,
    check_calibration,
    enumerate_blocks,
    load_table,
    profile_space,
    validate_table,
)
from archsearch.cost.latency._measure import Timing, time_callable

QUIET_TIMING = MeasureSettings(min_run_time=0.03, max_run_time=0.1, threshold=0.5, statistic="mean",
                               flush_bytes=0, stable_time=0.03)


def test_sentinel_monitor_flags_drift_and_load():
    times = iter([1.0, 1.0, 1.0, 1.02, 1.5, 1.0, 0.6, 0.6, 0.6, 0.6])
    load = {"value": 0.5}
    mon = SentinelMonitor(lambda: next(times), SentinelSettings(drift=0.1), threads=1, cpus=2,
                          loadavg=lambda: load["value"])
    assert mon.start() == 1.0
    assert mon.check() == (True, "")
    ok, why = mon.check()
    assert not ok and "+50%" in why and "baseline of 1.000 ms" in why
    load["value"] = 4.0  # three other jobs on a 2-core machine
    ok, why = mon.check()
    assert not ok and "load average 4.00" in why
    load["value"] = 0.5
    ok, why = mon.check()  # 40% faster, confirmed by a fresh baseline: the baseline was disturbed
    assert not ok and "baseline was disturbed" in why and mon.baseline_ms == pytest.approx(0.6)
    assert mon.disturbed_checks == 3 and mon.checks == 4


def test_a_machine_that_stays_slower_gets_a_new_baseline_not_endless_retries(tiny_space, tmp_path, monkeypatch):
    """A baseline taken while the machine ran fast (or a machine that slowed down for good):
    once a stretch stays 'disturbed' through every retry, the monitor takes a new baseline and
    the rest of the run is not measured again and again."""
    backends = _backends
    monkeypatch.setattr(backends, "time_module", lambda *a, **k: Timing(0.01, 0.01, 0.001, 10))
    readings = iter([1.0, 1.0, 1.0] + [1.6] * 200)  # baseline fast, then 60% slower for good
    monkeypatch.setattr(backends.TorchBackend, "sentinel_ms", lambda self, spec: next(readings))
    cands = sample_many(tiny_space, 3, seed=22)
    blocks = enumerate_blocks(cands)
    profile_space(cands, "cpu", tmp_path / "t.csv", threads=1, settings=QUIET_TIMING, calibrate=0, blocks=blocks,
                  sentinel=SentinelSettings(every=4, drift=0.25, check_load=False, max_retries=2))
    meta = load_table(tmp_path / "t.csv").meta["sentinel"]
    assert meta["rebased"] == 1 and meta["kept_disturbed_rows"] == 4  # one stretch, then the new baseline
    assert meta["remeasured_rows"] == 8 and meta["disturbed_checks"] == 3
    assert any("new baseline 1.600 ms" in e for e in meta["events"])


def test_a_stable_block_stops_before_min_run_time():
    # (a generous threshold: this test is about stopping early, not about a busy machine's noise)
    settings = MeasureSettings(min_run_time=0.5, max_run_time=1.0, threshold=0.5, statistic="median", flush_bytes=0)
    assert settings.stable_time == pytest.approx(0.125)
    t = time_callable(lambda: time.sleep(0.002), settings)
    # the calls it timed add up to well under min_run_time (the timer's own account, not the
    # wall clock around it, which a busy machine stretches)
    assert t.runs >= 5 and t.runs * t.median_ms < 0.45e3


def _busy_on(cpu: int) -> subprocess.Popen:
    """A process spinning on ``cpu``; returns once it spins."""
    code = f"import os, sys\nos.sched_setaffinity(0, {{{cpu}}})\nprint('go', flush=True)\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    return proc


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_disturbed_measurement_is_detected_and_measured_again(tiny_space, tmp_path):
    cands = sample_many(tiny_space, 3, seed=21)
    blocks = enumerate_blocks(cands)
    cpu = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    busy: list[subprocess.Popen] = []
    seen: list[str] = []

    def progress(phase, desc, done, total):
        if phase == "blocks" and done == 2 and not busy and not seen:
            busy.append(_busy_on(cpu))  # a busy background job on our core, mid-run
        if phase == "sentinel":
            seen.append(desc)
            for p in busy:  # the machine is quiet again for the re-measurement
                p.kill()
                p.wait()
            busy.clear()

    os.sched_setaffinity(0, {cpu})
    try:
        table = profile_space(cands, "cpu", tmp_path / "t.csv", threads=1, settings=QUIET_TIMING, calibrate=0,
                              blocks=blocks, progress=progress,
                              sentinel=SentinelSettings(every=6, drift=0.3, check_load=False, max_retries=3))
    finally:
        for p in busy:
            p.kill()
            p.wait()
        os.sched_setaffinity(0, old)
    meta = load_table(tmp_path / "t.csv").meta["sentinel"]
    assert seen and seen[0].startswith("disturbed: sentinel took")
    assert meta["disturbed_checks"] >= 1 and meta["remeasured_rows"] >= 1
    assert meta["block"] in blocks.specs and meta["baseline_ms"] > 0
    assert set(table.keys()) == set(blocks.specs)  # every row there, measured on a quiet machine


def test_check_calibration_refuses_the_shipped_kind_of_fit():
    # the unet_mobile @16 table's fit: 207 ms overhead on models of 408-1180 ms
    measured = [903.5, 1180.3, 408.3, 738.5, 1058.7]
    why = check_calibration(0.889403, 206.80904, measured)
    assert why == ("overhead 206.8 ms is 51% of the smallest calibration model (408.3 ms; allowed: within 15%)")
    assert check_calibration(1.02, 7.5, [300.0, 600.0]) == ""  # the quiet machine's fit
    assert "scale 0.500" in check_calibration(0.5, 0.0, [300.0])


class _Clock:
    """Blocks take their parameter count in ns; whole models take their blocks' sum + 50 ms."""

    def __call__(self, module, inputs, threads, settings, **_):
        n = sum(p.numel() for p in module.parameters())
        ms = 1e-6 * n + (50.0 if type(module).__name__ == "ArchUNet" else 0.01)
        return Timing(ms, ms, 0.0, 10)


def test_an_implausible_calibration_is_refused_not_stored(tiny_space, tmp_path, monkeypatch):
    monkeypatch.setattr(_backends, "time_module", _Clock())
    cands = sample_many(tiny_space, 3, seed=22)
    out = tmp_path / "t.csv"
    with pytest.raises(ImplausibleCalibrationError, match=r"t\.csv: calibration refused: overhead 49\.9 ms is 99% "
                                                          r"of the smallest calibration model"):
        profile_space(cands, "cpu", out, threads=1, calibrate=3, blocks=enumerate_blocks(cands), sentinel=None,
                      check_calibration=True)
    table = load_table(out)
    assert "calibration" not in table.meta  # not stored ...
    refused = table.meta["calibration_refused"]  # ... but kept aside, and re-measured next time
    assert len(refused["points"]) == 3 and refused["overhead_ms"] > 40
    # without the check (no --validate) the same run stores it, as before
    table = profile_space(cands, "cpu", out, threads=1, calibrate=3, blocks=enumerate_blocks(cands), sentinel=None)
    assert table.meta["calibration"]["overhead_ms"] > 40


def test_validation_refuses_a_table_with_an_implausible_calibration(tiny_space, tmp_path):
    t = LatencyTable(meta={"target": "cpu", "source": "measured", "resolution": 16, "threads": 1}, path=tmp_path / "x.csv")
    t.add_rows([{"key": "k", "ms": 1.0, "source": "measured"}])
    t.set_calibration(0.889403, 206.80904, [{"id": "a", "measured_ms": 408.3}, {"id": "b", "measured_ms": 903.5}],
                      "Theil-Sen")
    with pytest.raises(ImplausibleCalibrationError, match=r"x\.csv: calibration refused: overhead 206\.8 ms is 51%"):
        validate_table(t, tiny_space, 4)
    assert np.isfinite(t.calibration[1])

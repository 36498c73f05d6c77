"""Tables know their device (the fingerprint in a measured table's header, the one-line
warning when this machine is another one) and few-shot recalibration to this machine
(``archsearch profile --recalibrate``), issue 22 items 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from typer.testing import CliRunner

from archsearch.cli.main import app
from archsearch.cost.latency import (
    FOREIGN_DEVICE_LABEL,
    Backend,
    LatencyTable,
    MeasureSettings,
    check_table_device,
    device_fingerprint,
    fingerprint_differences,
    fit_recalibration,
    load_table,
    plan_profile,
    predict,
    recalibrate_table,
    run_profile,
    sample_candidates,
    table_fingerprint,
    type_sums,
)
from archsearch.errors import ArchsearchError, ParameterError

runner = CliRunner()
FAST = MeasureSettings(min_run_time=0.002, max_run_time=0.02, threshold=0.5, flush_bytes=0)
TINY_CPU = ROOT / "latency_tables" / "tiny-cpu-r16.csv"
#: another machine, as a table made there would record it
XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cores": 64, "cpu_capability": "AVX512",
        "cpu_flags": "avx avx2 avx512f amx_tile", "torch": "2.9.0+cpu", "torch_build": "oneDNN, MKL, OpenMP",
        "threads": 1, "platform": "Linux x86_64"}


def _flat(text: str) -> str:
    return " ".join(text.split())


def _copy(src: Path, dst: Path, **meta) -> Path:
    """``src`` saved at ``dst`` with header keys changed (``None`` removes one)."""
    table = load_table(src)
    for k, v in meta.items():
        if v is None:
            table.meta.pop(k, None)
        else:
            table.meta[k] = v
    table.path = None
    table.save(dst)
    return dst


def _fast_tiny(tmp_path: Path, **meta) -> Path:
    """The shipped tiny CPU table, its timing settings made fast (whole models in ~0.05 s)."""
    measure = {**load_table(TINY_CPU).meta["measure"], "min_run_time": 0.01, "max_run_time": 0.05}
    return _copy(TINY_CPU, tmp_path / "tiny-cpu-r16.csv", measure=measure, **meta)


# ----------------------------------------------------------------------------- item 1: the fingerprint


def test_a_profiled_table_records_this_machine_in_its_header(tmp_path, tiny_space, one_thread):
    cand = sample_candidates(tiny_space, 1, 3, 8)
    out = tmp_path / "t.csv"
    plan = plan_profile(cand, "cpu", out, resolution=8, threads=1, settings=FAST, calibrate=0, sentinel=None)
    plan.todo = plan.todo[:2]  # two rows are enough to be a measured table
    run_profile(plan)
    assert "# fingerprint:" in out.read_text()
    table = load_table(out)
    fp, full = table_fingerprint(table.meta)
    here = device_fingerprint("cpu", 1)
    assert full and fp == here
    assert {"cpu", "cores", "cpu_capability", "cpu_flags", "threads", "torch", "torch_build"} <= set(fp)
    assert fp["threads"] == 1 and fp["cores"] >= 1 and fp["torch"]
    check = check_table_device(table)
    assert check.status == "same" and check.warning == "" and check.label == ""


def test_a_forged_fingerprint_is_named_in_one_line(tmp_path):
    path = _copy(TINY_CPU, tmp_path / "forged.csv", fingerprint=XEON)
    check = check_table_device(load_table(path))
    assert check.differs and "CPU model" in check.differences
    line = check.warning
    assert "\n" not in line
    assert line.startswith(f"{path} was measured on Intel(R) Xeon(R) Platinum 8480+ (64 cores, torch 2.9.0)")
    assert f"this machine is {device_fingerprint()['cpu']}" in line
    assert f"archsearch profile --recalibrate {path} -n 8" in line
    assert check.label.startswith(FOREIGN_DEVICE_LABEL)


def test_predict_says_when_the_table_is_from_another_machine(tmp_path):
    forged = _copy(TINY_CPU, tmp_path / "forged.csv", fingerprint=XEON)
    res = runner.invoke(app, ["predict", str(ROOT / "search_spaces" / "tiny.yaml"), "--table", str(forged), "-n", "2"])
    assert res.exit_code == 0, res.output
    out = _flat(res.output)
    assert f"warning: {forged} was measured on Intel(R) Xeon(R) Platinum 8480+" in out
    assert "--recalibrate" in out
    here = _copy(TINY_CPU, tmp_path / "here.csv", fingerprint=device_fingerprint("cpu", 1))
    res = runner.invoke(app, ["predict", str(ROOT / "search_spaces" / "tiny.yaml"), "--table", str(here), "-n", "2"])
    assert res.exit_code == 0 and "warning" not in res.output


def test_old_tables_load_and_are_judged_on_their_device_line(monkeypatch):
    from archsearch.cost.latency import _fingerprint

    monkeypatch.setattr(_fingerprint, "_machine", lambda target: tuple(XEON.items()))
    shipped = sorted((ROOT / "latency_tables").glob("*.csv"))
    assert shipped
    for path in shipped:
        table = load_table(path)  # every shipped table still loads
        check = check_table_device(table)
        if table.source != "measured":
            assert check.status == "exempt" and check.warning == ""  # ANE estimates: elsewhere by design
            continue
        fp, full = table_fingerprint(table.meta)
        assert not full and fp["cpu"] == "AMD EPYC" and fp["cores"] == 2
        assert check.differs
        assert check.warning.startswith(f"{path} was measured on AMD EPYC (2 cores, torch 2.14.1); "
                                        "this machine is Intel(R) Xeon(R) Platinum 8480+ (64 cores, torch 2.9.0)")


def test_a_table_without_a_device_is_an_unknown_device_and_imports_are_exempt():
    rows = [{"key": "a@1", "type": "resnet", "ms": 1.0, "source": "measured"}]
    assert check_table_device(LatencyTable(meta={"target": "cpu"})).status == "exempt"  # no rows: nothing measured
    table = LatencyTable(meta={"target": "cpu"})
    table.add_rows(rows)
    check = check_table_device(table)
    assert check.status == "unknown" and check.warning == "" and check.recorded_text == "an unknown device"
    phone = LatencyTable(meta={"target": "ane", "device": "iPhone 16 Pro Max (A18 Pro)"})
    phone.add_rows([{**rows[0], "source": "imported"}])
    assert check_table_device(phone).status == "exempt"


def test_a_cuda_table_compares_the_gpu_and_its_driver():
    old = {"gpu": "NVIDIA A100-SXM4-80GB", "gpu_driver": "535.104", "torch": "2.5.1+cu124", "cpu": "X"}
    new = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_driver": "550.54", "torch": "2.5.1+cu124", "cpu": "Y"}
    assert fingerprint_differences(old, new, "cuda") == ["GPU", "driver 535.104 vs 550.54"]
    assert fingerprint_differences(old, {**old, "cpu": "Y"}, "cuda") == []  # the CPU does not time a GPU table
    assert fingerprint_differences({"cpu": "A", "torch": "2.5.1+cu124"}, {"cpu": "A", "torch": "2.5.1+cpu"}) == []


# ----------------------------------------------------------------------------- item 2: recalibration


class FakeTimer(Backend):
    """A "machine" whose whole models take ``factors[type]`` times the table's rows of that
    type (optionally with a fixed multiplicative noise per model); counts its calls."""

    target = "cpu"
    source = "measured"
    dtype = "float32"
    threads = 1

    def __init__(self, table: LatencyTable, factors: dict[str, float], noise: float = 0.0, fail_at: int = -1):
        self.table, self.factors, self.noise, self.fail_at = table, factors, noise, fail_at
        self.calls = 0

    def true_ms(self, candidates) -> np.ndarray:
        sums = type_sums(self.table, candidates)
        return (sums * [self.factors[t] for t in sums.columns]).sum(axis=1).to_numpy()

    def block_row(self, spec, census, existing):
        raise AssertionError("recalibration times whole models only")

    def model_ms(self, candidate) -> float:
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.calls += 1
        wobble = 1.0 + self.noise * (1 if self.calls % 2 else -1)
        return float(self.true_ms([candidate])[0]) * wobble


PER_TYPE = {"resnet": 2.0, "transformer": 0.5, "conv_in": 1.3, "conv_out": 1.3, "downsample": 1.3,
            "upsample": 1.3, "time_embed": 1.3}


def test_recalibration_recovers_known_per_type_scales(tmp_path, tiny_space):
    source = load_table(TINY_CPU)
    timer = FakeTimer(source, PER_TYPE)
    out = tmp_path / "new.csv"
    res = recalibrate_table(TINY_CPU, 8, out, space=tiny_space, backend=timer)
    assert timer.calls == 8 and res.fit.method == "per-type"
    assert res.fit.scales["resnet"] == pytest.approx(2.0, rel=0.02)
    assert res.fit.scales["transformer"] == pytest.approx(0.5, rel=0.03)
    assert res.fit.mape < 1.0
    # candidates it never timed: the new table predicts this "machine", the old one does not
    held_out = sample_candidates(tiny_space, 20, 12345, 16)
    truth = timer.true_ms(held_out)
    new = load_table(out)
    assert np.abs(predict(held_out, new) / truth - 1).max() < 0.02
    assert np.abs(predict(held_out, source) / truth - 1).max() > 0.2
    # the header says where it came from, with K, the fit, and this machine
    d = new.meta["derived_from"]
    assert d["table"] == str(TINY_CPU) and d["models"] == 8 and d["fit"]["method"] == "per-type"
    assert d["device"] == "AMD EPYC (2 cores)" and len(d["points"]) == 8 and d["sha256"]  # the source's device
    assert d["fit"]["mape"] < 1.0 and d["fit"]["loo_mape"] is not None
    assert table_fingerprint(new.meta) == (device_fingerprint("cpu", 1), True)
    assert new.source == "measured" and new.calibration == (1.0, 0.0)
    assert check_table_device(new).status == "same"
    assert f"--out {out}" in new.meta["command"]


def test_few_models_fit_one_global_scale(tmp_path, tiny_space):
    source = load_table(TINY_CPU)
    timer = FakeTimer(source, dict.fromkeys(PER_TYPE, 1.7))
    res = recalibrate_table(source, 3, tmp_path / "new.csv", space=tiny_space, backend=timer)
    assert res.fit.method == "global" and res.fit.k == 3
    assert list(res.fit.scales.values()) == pytest.approx([1.7] * len(res.fit.scales))
    assert res.points["fitted_ms"].to_numpy() == pytest.approx(res.points["measured_ms"].to_numpy())
    # the models are spread over the table's range, fastest first
    assert res.points["table_ms"].is_monotonic_increasing


def test_noisy_measurements_shrink_towards_the_global_scale():
    rng = np.random.default_rng(0)
    import pandas as pd

    sums = pd.DataFrame({"resnet": rng.uniform(5, 20, 8), "transformer": rng.uniform(2, 10, 8),
                         "conv_in": np.full(8, 0.3) + rng.uniform(0, 0.01, 8)})
    y = (1.8 * sums["resnet"] + 1.2 * sums["transformer"] + 1.5 * sums["conv_in"]).to_numpy()
    fit = fit_recalibration(sums, y * (1 + rng.normal(0, 0.02, 8)))
    assert fit.method == "per-type" and fit.loo_mape < fit.global_loo_mape
    assert fit.scales["resnet"] == pytest.approx(1.8, rel=0.05)
    assert fit.scales["transformer"] == pytest.approx(1.2, rel=0.1)
    assert 0.8 < fit.scales["conv_in"] < 2.5  # a type that is 2 % of a model keeps a sane scale


def test_an_interrupted_recalibration_leaves_no_table(tmp_path, tiny_space):
    timer = FakeTimer(load_table(TINY_CPU), PER_TYPE, fail_at=2)
    out = tmp_path / "new.csv"
    with pytest.raises(KeyboardInterrupt):
        recalibrate_table(TINY_CPU, 5, out, space=tiny_space, backend=timer)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_recalibration_refuses_estimates_and_its_own_source(tmp_path, tiny_space):
    estimate = ROOT / "latency_tables" / "unet_mobile-ane-r128-estimate.csv"
    with pytest.raises(ArchsearchError, match=r"source estimate: only a measured table can be recalibrated"):
        recalibrate_table(estimate, 3, tmp_path / "x.csv", space=tiny_space)
    src = _fast_tiny(tmp_path)
    with pytest.raises(ParameterError, match=r"is the table being recalibrated"):
        recalibrate_table(src, 3, src)
    with pytest.raises(ParameterError, match=r"^models 1: bad value"):
        recalibrate_table(src, 1, tmp_path / "y.csv")


def test_cli_recalibrate_writes_a_table_that_says_where_it_came_from(tmp_path, one_thread):
    src = _fast_tiny(tmp_path, fingerprint=XEON)
    out = tmp_path / "here.csv"
    res = runner.invoke(app, ["profile", "--recalibrate", str(src), "-n", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "timed 3 whole models" in text and f"wrote {out}" in text
    new = load_table(out)
    d = new.meta["derived_from"]
    assert d["table"] == str(src) and d["models"] == 3 and d["fit"]["method"] == "global"
    assert d["fingerprint"]["cpu"] == XEON["cpu"]  # the machine it came from
    assert d["how"] == f"archsearch profile --recalibrate {src} -n 3 --out {out}"
    assert len(new) == len(load_table(src)) and (new.df["note"].str.contains("recalibrated x")).all()
    assert check_table_device(new).status == "same"
    # an estimate table is refused in one line
    bad = runner.invoke(app, ["profile", "--recalibrate", str(TINY_CPU.parent / "unet_mobile-ane-r128-estimate.csv")])
    assert bad.exit_code == 2 and "only a measured table can be recalibrated" in bad.output
    assert "Traceback" not in bad.output


def test_report_labels_latencies_from_another_device(tmp_path):
    from report_helpers import make_study

    from archsearch.report import write_report

    forged = _copy(TINY_CPU, tmp_path / "forged.csv", fingerprint=XEON)
    study = make_study(tmp_path / "reports", n=12)
    meta = json.loads((study / "meta.json").read_text())
    meta["latency_table"] = str(forged)
    (study / "meta.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["report", str(study)])
    assert res.exit_code == 0 and f"warning: {forged} was measured on Intel" in _flat(res.output)  # one line
    page = (study / "index.html").read_text()
    assert f"latency ({FOREIGN_DEVICE_LABEL})" in page and "Intel(R) Xeon(R) Platinum 8480+" in page
    meta["latency_table"] = str(_copy(TINY_CPU, tmp_path / "here.csv", fingerprint=device_fingerprint("cpu", 1)))
    (study / "meta.json").write_text(json.dumps(meta))
    assert FOREIGN_DEVICE_LABEL not in write_report(study).read_text()


def test_run_says_when_the_table_is_from_another_machine(tmp_path):
    from search_helpers import make_spec

    from archsearch.search import run_search
    from archsearch.spec import load_space

    class Said(Exception):
        pass

    def log(message: str) -> None:
        if message.startswith("warning:"):
            raise Said(message)

    forged = _copy(TINY_CPU, tmp_path / "forged.csv", fingerprint=XEON)
    spec = load_space(make_spec(tmp_path, forged, search={"n_trials": 1, "sampler": "random"}))
    with pytest.raises(Said, match=rf"^warning: {forged} was measured on Intel\(R\) Xeon\(R\) Platinum 8480\+"):
        run_search(spec, reports_dir=tmp_path / "reports", progress=None, log=log)  # said before any training


# --------------------------------------------------------------------------- same CPU name, another speed


def test_a_table_whose_sentinel_runs_at_another_speed_here_is_named_in_one_line(tmp_path):
    """Two VMs with one CPU string can differ by 20%+: the sentinel block the table recorded is
    timed again, and a baseline three times this machine's is reported with the ratio."""
    from archsearch.cost.latency import check_table_speed, load_table, parse_block_key

    shipped = ROOT / "latency_tables" / "tiny-cpu-r16.csv"
    table = load_table(shipped)
    here = check_table_speed(table)
    assert here is not None and here.block == table.meta["sentinel"]["block"]
    assert 0.2 < here.ratio < 5  # the same block on a machine of this kind

    text = shipped.read_text()
    baseline = table.meta["sentinel"]["baseline_ms"]
    forged = tmp_path / "tiny-cpu-r16.csv"
    forged.write_text(text.replace(f"baseline_ms: {baseline}", f"baseline_ms: {here.now_ms * 3:.6f}", 1))
    slow_there = check_table_speed(load_table(forged))
    assert slow_there.ratio == pytest.approx(1 / 3, rel=0.5)
    assert slow_there.warning.startswith(f"{forged}: its sentinel block takes ")
    assert "this machine is faster" in slow_there.warning
    assert slow_there.warning.endswith(f"run archsearch profile --recalibrate {forged} -n 8")

    # an estimate describes a device elsewhere by design: nothing is timed
    assert check_table_speed(load_table(ROOT / "latency_tables" / "unet_mobile-ane-r128-estimate.csv")) is None
    assert parse_block_key("resnet(groups=8,in_channels=96,variant=separable)@1x96x8x8") == (
        "resnet", {"groups": 8, "in_channels": 96, "variant": "separable"}, (1, 96, 8, 8))

"""The supernet proxy (issue 12 §3): sub-network scoring, coverage, `proxy: {kind: supernet}`
end to end through `archsearch run`, and a supernet training that resumes after a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from search_helpers import PROXY, ROOT, make_spec
from typer.testing import CliRunner

from archsearch.candidate import LargestChooser, resolve, sample_many
from archsearch.distill import (
    ProxyConfig,
    SupernetError,
    holdout_for,
    load_supernet,
    load_teacher,
    proxy_scale,
    supernet_key,
)
from archsearch.errors import SpecError
from archsearch.model import walk
from archsearch.spec import load_space, load_space_text

runner = CliRunner()

#: the search tests' proxy (8x8 latents, a 10-step teacher) with a short supernet training
SN_PROXY = {**PROXY, "kind": "supernet", "supernet_steps": 12}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, one_thread):
    space = load_space(ROOT / "search_spaces" / "tiny.yaml")
    proxy = ProxyConfig.from_dict(SN_PROXY)
    cache = tmp_path_factory.mktemp("sn-cache")
    teacher = load_teacher(proxy, kind="image", cache_dir=cache, threads=1)
    net = load_supernet(space, proxy, teacher, threads=1, cache_dir=cache)
    return space, proxy, teacher, net, cache


def _batch(teacher, proxy, n=3):
    h = holdout_for(teacher, proxy, torch.device("cpu"))
    return h["xt"][:n], h["t"][:n], h["ctx"][:n]


def test_a_sub_network_equals_the_supernet_with_those_blocks_skipped(trained) -> None:
    space, proxy, teacher, net, _ = trained
    largest = [b.name for b in walk(net.plan.largest)]
    assert "down.0.layer1.resnet" in largest and "up.1.layer2.resnet" in largest
    # one ResNet layer fewer in stage 0, one transformer layer fewer and no self-attention in stage 1
    cand = resolve(space, LargestChooser({"down0.resnet_blocks": 1, "down1.transformer_depth": 1, "down1.attention": "cross"}))
    small = proxy_scale(cand, teacher, proxy)
    assert {b.name for b in walk(small)} == set(largest) - {"down.0.layer1.resnet", "up.1.layer2.resnet"}
    skip = {"down.0.layer1.resnet", "up.1.layer2.resnet"}
    for block in ("down.1.layer0.transformer", "up.0.layer0.transformer", "up.0.layer1.transformer"):
        skip |= {f"{block}/layers.1", f"{block}/layers.0.attn1"}
    x, t, ctx = _batch(teacher, proxy)
    with torch.no_grad():
        sub, _ = net.forward_features(small, x, t, ctx)
        skipped = net.run_skipping(skip, x, t, ctx)
        whole = net.run_skipping(set(), x, t, ctx)
        standalone = net.extract(small, proxy_scaled=True)(x, t, ctx)
    assert torch.equal(sub, skipped)
    assert torch.allclose(sub, standalone, atol=1e-6, rtol=0)
    assert not torch.allclose(sub, whole)  # the skipped blocks did something
    with pytest.raises(ValueError, match="changes the shape"):
        net.run_skipping({"down.1.layer0.resnet"}, x, t, ctx)


def test_narrower_candidates_are_weight_slices_and_scores_are_deterministic(trained) -> None:
    space, proxy, teacher, net, cache = trained
    cands = sample_many(space, 6, seed=3)
    x, t, ctx = _batch(teacher, proxy)
    for c in cands:
        small = proxy_scale(c, teacher, proxy)
        model = net.extract(small, proxy_scaled=True)
        with torch.no_grad():
            sub, _ = net.forward_features(small, x, t, ctx)
            assert torch.allclose(sub, model(x, t, ctx), atol=1e-5, rtol=0)
        # every tensor of the standalone model is a slice of a supernet tensor (shared weights)
        assert sum(p.numel() for p in model.parameters()) < net.plan.n_params
    scores = [net.score(c).quality for c in cands]
    assert scores == [net.score(c).quality for c in cands]
    assert len(set(scores)) == len(scores)  # different sub-networks, different scores
    again = load_supernet(space, proxy, teacher, threads=1, cache_dir=cache)  # from the cache
    assert again.info["trained_now"] is False and again.key == net.key
    assert [again.score(c).quality for c in cands] == scores
    r = net.score(cands[0])
    assert r.steps == 0 and r.metrics["proxy_kind"] == "supernet" and r.metrics["supernet"] == net.key


def test_every_candidate_of_the_tiny_space_is_covered_and_others_get_one_line(trained) -> None:
    space, proxy, teacher, net, _ = trained
    assert all(net.covers(c) for c in sample_many(space, 40, seed=11))
    wide = load_space_text((ROOT / "search_spaces" / "tiny.yaml").read_text().replace(
        "channels: {choice: [32, 48]}", "channels: {choice: [64, 96]}"), "wide.yaml")
    outsider = sample_many(wide, 1, seed=0)[0]
    assert not net.covers(outsider)
    with pytest.raises(SupernetError) as info:
        net.score(outsider)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("proxy.kind: supernet cannot score candidate")
    assert "use proxy.kind: per_trial" in msg


def test_proxy_kind_is_validated_in_one_line() -> None:
    text = (ROOT / "search_spaces" / "tiny.yaml").read_text() + "proxy:\n  kind: shared\n"
    with pytest.raises(SpecError, match=r"^bad\.yaml:\d+: proxy\.kind: bad value 'shared' "
                                        r"\(allowed: per_trial, supernet\)$"):
        ProxyConfig.from_space(load_space_text(text, "bad.yaml"))
    cfg = ProxyConfig.from_dict({"kind": "supernet", "steps": 5})
    assert cfg.kind == "supernet" and cfg.supernet_training_steps == 50
    assert "kind" not in ProxyConfig.from_dict({}).to_dict()  # old study records read as before


@pytest.mark.parametrize("sampler", ["random", "nsga2"])
def test_run_with_the_supernet_proxy_end_to_end(tmp_path: Path, tiny_table: Path, sampler: str, monkeypatch) -> None:
    from archsearch import distill as stage
    from archsearch.cli.main import app

    def no_proxy_runs(*args, **kwargs):  # the supernet scores every trial: no distillation run
        raise AssertionError("a per-trial proxy run was started")

    monkeypatch.setattr(stage, "distill", no_proxy_runs)
    spec = make_spec(tmp_path, tiny_table, proxy=SN_PROXY, search={"n_trials": 6, "sampler": sampler})
    res = runner.invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "reports" / "t"
    df = pd.read_csv(out / "trials.csv", dtype={"candidate_id": str})
    assert len(df) == 6 and set(df["state"]) <= {"complete", "infeasible"} and (df["state"] == "complete").any()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["proxy"]["kind"] == "supernet" and meta["pareto"]
    assert (out / "index.html").is_file()
    done = df[df["state"] == "complete"]
    assert done["loss_curve"].map(json.loads).map(len).eq(0).all()  # scored, not trained
    # the same candidate scored by the supernet directly gives the recorded quality
    space = load_space(spec)
    proxy = ProxyConfig.from_space(space)
    teacher = load_teacher(proxy, kind="image")
    net = load_supernet(space, proxy, teacher)
    assert net.info["trained_now"] is False
    from archsearch.candidate import Candidate

    row = done.iloc[0]
    assert net.score(Candidate.from_dict(json.loads(row["candidate"]))).quality == pytest.approx(row["quality"], rel=1e-6)


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from archsearch.distill import ProxyConfig, load_supernet, load_teacher
    from archsearch.spec import load_space
    proxy = ProxyConfig.from_dict({proxy!r})
    space = load_space({space!r})
    teacher = load_teacher(proxy, kind="image", cache_dir={cache!r}, threads=1)
    slow = lambda phase, desc, done, total: time.sleep(0.05) if phase == "supernet" else None
    load_supernet(space, proxy, teacher, threads=1, cache_dir={cache!r}, checkpoint_every=4, progress=slow)
""")


def test_supernet_training_resumes_after_kill_9(tmp_path: Path, one_thread) -> None:
    proxy_d = {**SN_PROXY, "supernet_steps": 40}
    space_path = str(ROOT / "search_spaces" / "tiny.yaml")
    cache = tmp_path / "cache"
    script = _TRAIN_SCRIPT.format(proxy=proxy_d, space=space_path, cache=str(cache))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    space = load_space(space_path)
    proxy = ProxyConfig.from_dict(proxy_d)
    try:
        deadline = time.time() + 300  # the subprocess trains its teacher first: slow on a busy machine
        latest = None
        while time.time() < deadline:  # kill -9 once a checkpoint exists, mid-training
            assert proc.poll() is None, f"the training ended before it could be killed: {proc.stderr.read()!r}"
            found = list(cache.glob("supernets/*/training/latest"))
            if found:
                latest = found[0]
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        assert latest is not None, "no checkpoint appeared"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    folder = latest.parent.parent
    assert not (folder / "supernet.json").exists()  # the killed run left a checkpoint, no entry
    teacher = load_teacher(proxy, kind="image", cache_dir=cache, threads=1)
    assert folder.name == supernet_key(space, proxy, teacher)
    resumed = load_supernet(space, proxy, teacher, threads=1, cache_dir=cache)
    assert resumed.info["trained_now"] and resumed.info["resumed_from"] >= 4
    assert (folder / "supernet.json").is_file() and not (folder / "training").exists()
    # an uninterrupted training ends with the same weights
    other = tmp_path / "other"
    plain = load_supernet(space, proxy, load_teacher(proxy, kind="image", cache_dir=other, threads=1),
                          threads=1, cache_dir=other)
    assert plain.info["resumed_from"] == 0
    a, b = resumed.state_tensors(), plain.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""Full training and the latent cache: proxy runs, a search and `archsearch train` on cached data
with a tiny diffusers teacher; resume exactness, crashes during checkpoints, NaN, EMA, the
pipeline, init from the teacher, frozen spatial layers of a video run, DDP on CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from archsearch.candidate import Candidate, sample
from archsearch.cli.main import app
from archsearch.data import clear_caches
from archsearch.distill import (
    OBJECTIVES,
    KDObjective,
    ProxyConfig,
    TrainConfig,
    distill,
    init_from_teacher,
    list_checkpoints,
    load_teacher,
    train,
)
from archsearch.errors import ArchsearchError
from archsearch.model import ArchUNet, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_fixtures as F  # noqa: E402
from search_helpers import crash_at, make_spec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def sd(sd_checkpoint):
    return sd_checkpoint


@pytest.fixture(scope="module")
def sd_teacher(sd):
    return load_teacher(ProxyConfig.from_dict({"teacher": {"diffusers": str(sd)}}), "image")


def _proxy(sd, cache=None, **kw):
    d = {"width_mult": 0.5, "resolution": 16, "steps": 4, "batch": 2, "holdout": 4, "lr": 1e-3,
         "teacher": {"diffusers": str(sd)}, **kw}
    if cache is not None:
        d["data"] = str(cache)
    return ProxyConfig.from_dict(d)


def _tiny_candidate(seed=0):
    from archsearch.spec import load_space

    return sample(load_space(ROOT / "search_spaces" / "tiny.yaml"), seed)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --------------------------------------------------------------------------- the cache in proxy runs


def test_proxy_run_on_the_cache_is_deterministic_and_reads_no_encoder(sd, sd_cache, sd_teacher, monkeypatch):
    import archsearch.data._text as text

    def boom(*a, **k):
        raise AssertionError("a cached run must not encode text")

    monkeypatch.setattr(text.TextEncoder, "encode", boom)
    monkeypatch.setattr(text.TextEncoder, "encode_dataset", boom)
    cand = _tiny_candidate()
    proxy = _proxy(sd, sd_cache)
    clear_caches()
    a = distill(cand, sd_teacher, proxy, threads=1)
    clear_caches()
    b = distill(cand, sd_teacher, proxy, threads=1)
    assert a.quality == b.quality and a.loss_curve == b.loss_curve
    assert a.metrics["data"] == str(sd_cache) and a.metrics["holdout_split"] == "holdout"
    half = distill(cand, sd_teacher, _proxy(sd, sd_cache, resolution=8), threads=1)  # latents pooled 16 -> 8
    assert half.quality != a.quality
    with pytest.raises(ArchsearchError, match=r"proxy\.resolution: bad value 12 \(allowed: the cache's latent side 16"):
        distill(cand, sd_teacher, _proxy(sd, sd_cache, resolution=12), threads=1)


def test_validate_checks_the_cache_against_teacher_and_space(sd, sd_cache, tmp_path, tiny_table):
    spec = make_spec(tmp_path, tiny_table, proxy={"data": str(sd_cache), "teacher": {"diffusers": str(sd)},
                                                   "resolution": 16})
    r = runner.invoke(app, ["validate", str(spec)])
    assert r.exit_code == 0, r.output
    other = F.build_sd_checkpoint(tmp_path / "other", seed=1)  # same shapes, other weights
    bad = make_spec(tmp_path, tiny_table, name="b", proxy={"data": str(sd_cache), "teacher": {"diffusers": str(other)}})
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2 and "proxy.data" in r.output and "teacher hash" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    data = yaml.safe_load(spec.read_text())
    data["latent_channels"] = 8
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["validate", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2 and "latent_channels 4 (the space has 8)" in r.output, r.output
    missing = make_spec(tmp_path, tiny_table, name="m", proxy={"data": str(tmp_path / "nope"),
                                                                "teacher": {"diffusers": str(sd)}})
    r = runner.invoke(app, ["validate", str(missing)])
    assert r.exit_code == 2 and "no index.json" in r.output, r.output


# --------------------------------------------------------------------------- end to end


def test_search_then_train_then_generate_on_the_cache(sd, sd_cache, tmp_path, tiny_table):
    """A 3-trial search on the cache, train a Pareto candidate, load its pipeline, draw."""
    spec = make_spec(tmp_path, tiny_table, proxy={"data": str(sd_cache), "teacher": {"diffusers": str(sd)},
                                                   "resolution": 16, "steps": 2},
                     search={"n_trials": 3, "warm_start": False, "sampler": "random"})
    r = runner.invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "reports" / "t" / "meta.json").read_text())
    assert meta["proxy"]["data"] == str(sd_cache)  # the study records its data
    front = sorted((tmp_path / "reports" / "t" / "pareto").glob("*.yaml"))
    assert front
    out = tmp_path / "trained"
    r = runner.invoke(app, ["train", str(front[0]), "--spec", str(spec), "--data", str(sd_cache), "--steps", "4",
                            "--width-mult", "0.5", "--batch", "2", "--out", str(out), "--device", "cpu",
                            "--sample-every", "2", "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "1"])
    assert r.exit_code == 0, r.output
    assert "init from teacher:" in r.output and "tensors copied" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["data"] == str(sd_cache) and metrics["resolution"] == 16
    assert (out / "samples" / "step-00000002.png").is_file() and (out / "log.csv").is_file()
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[1]["holdout_kd"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002", "step-00000004"]

    # EMA: differs from the raw weights and is what the model folder and the pipeline hold
    ema, raw = _weights(out), _weights(out / "raw")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    unet = _weights(out / "pipeline" / "unet")
    assert all(torch.equal(unet[k], ema[k]) for k in ema)
    assert ArchUNet.from_pretrained(out / "pipeline" / "unet").candidate.resolution == 16

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)  # 16x16 latents through the /2 VAE
    r = runner.invoke(app, ["generate", str(out), "--prompt", "a red circle", "--steps", "2", "-n", "2",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from PIL import Image

    pngs = sorted((out / "generated").glob("*.png"))
    assert [p.name for p in pngs] == ["a-red-circle-0.png", "a-red-circle-1.png"] and Image.open(pngs[0]).size == (32, 32)


def test_train_says_when_it_adapts_the_candidate_and_keeps_both_ids(sd, sd_cache, sd_teacher, tmp_path, tiny_table):
    """The teacher's text encoder forces another context width/length: the log says so in one
    line naming both ids, the adapted candidate is saved beside the model, metrics.json names
    both; a candidate already at the teacher's shapes is trained as it is, silently."""
    spec = make_spec(tmp_path, tiny_table, proxy={"data": str(sd_cache), "teacher": {"diffusers": str(sd)},
                                                   "resolution": 16})
    cand = _tiny_candidate(3)
    assert (cand.context_dim, cand.context_length) != (sd_teacher.context_dim, sd_teacher.context_length)
    path = cand.save(tmp_path / f"{cand.id}.yaml")
    args = ["--spec", str(spec), "--steps", "2", "--batch", "2", "--device", "cpu", "--sample-every", "0",
            "--eval-every", "0", "--checkpoint-every", "0"]
    out = tmp_path / "adapted"
    r = runner.invoke(app, ["train", str(path), *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    trained = Candidate.from_yaml(out / "candidate.yaml")  # beside the model
    assert trained.id != cand.id and ArchUNet.from_pretrained(out).candidate.id == trained.id
    assert (trained.context_dim, trained.context_length) == (sd_teacher.context_dim, sd_teacher.context_length)
    flat = " ".join(r.output.split())
    change = f"context_length {cand.context_length}->{sd_teacher.context_length}"
    assert (f"adapted candidate {cand.id} to the teacher and this run: training {trained.id} (" in flat
            and change in flat and f"saved as {out / 'candidate.yaml'}" in flat), flat
    assert f"trained {trained.id} (adapted from {cand.id};" in flat, flat
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate_id"] == trained.id and metrics["requested_candidate_id"] == cand.id
    assert change in metrics["adapted"] and metrics["candidate"] == cand.id  # the key older readers use

    exact = cand.for_proxy(context_dim=sd_teacher.context_dim, context_length=sd_teacher.context_length,
                           latent_channels=sd_teacher.latent_channels, resolution=16)
    path = exact.save(tmp_path / f"{exact.id}.yaml")
    out = tmp_path / "as_is"
    r = runner.invoke(app, ["train", str(path), *args, "--width-mult", "1.0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "adapted candidate" not in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate_id"] == metrics["requested_candidate_id"] == exact.id and metrics["adapted"] == []
    assert Candidate.from_yaml(out / "candidate.yaml").id == exact.id


def test_resume_gives_the_same_weights_as_a_straight_run(sd, sd_cache, sd_teacher, tmp_path):
    cand = _tiny_candidate()
    cfg = TrainConfig(proxy=_proxy(sd, steps=20), checkpoint_every=10, keep=2, log_every=5)
    train(cand, sd_teacher, sd_cache, cfg, tmp_path / "straight", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(cand, sd_teacher, sd_cache, cfg, tmp_path / "split", device="cpu", callbacks=[crash_at(13)])
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-00000010"]
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-00000010" / "state.json").read_text())
    assert state["step"] == 10 and state["data_position"] == 10
    assert "objective" not in state["settings"]  # KD: the checkpoint as it always was, no objective state
    assert not (tmp_path / "split" / "checkpoints" / "step-00000010" / "objective.pt").exists()
    res = train(cand, sd_teacher, sd_cache, cfg, tmp_path / "split", device="cpu", resume="latest")
    assert res.start_step == 10 and len(res.loss_curve) == 10
    for sub in ("", "raw"):
        a, b = _weights(tmp_path / "straight" / sub), _weights(tmp_path / "split" / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert straight["loss_curve"][10:] == res.loss_curve


class _Counting(KDObjective):
    """KD scaled by a factor that follows the optimizer steps seen: its state must resume."""

    name = "counting"

    def __init__(self, base: KDObjective) -> None:
        super().__init__(base.kd_output, base.kd_feature, base.pairs, base.projections)
        self.seen = 0

    def loss(self, pred, feats, batch):
        loss, parts = super().loss(pred, feats, batch)
        return loss * (1.0 + 0.25 * self.seen), parts

    def after_step(self, step):
        assert step == self.seen + 1
        self.seen = step

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = int(state["seen"])


def test_an_objective_with_its_own_state_resumes_exactly(sd, sd_cache, sd_teacher, tmp_path, monkeypatch):
    from archsearch.errors import ParameterError

    monkeypatch.setitem(OBJECTIVES, "counting", lambda ctx: _Counting(OBJECTIVES["kd"](ctx)))
    with pytest.raises(ParameterError, match=r"^objective: bad value 'nope' \(allowed: [a-z, ]*counting, [a-z, ]*kd\b.*\)$"):
        TrainConfig(proxy=_proxy(sd), objective="nope").check()
    cand = _tiny_candidate()
    cfg = TrainConfig(proxy=_proxy(sd, steps=6), checkpoint_every=3, keep=2, log_every=1, ema_decay=0,
                      objective="counting")
    straight = train(cand, sd_teacher, sd_cache, cfg, tmp_path / "straight", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(cand, sd_teacher, sd_cache, cfg, tmp_path / "split", device="cpu", callbacks=[crash_at(5)])
    ckpt = tmp_path / "split" / "checkpoints" / "step-00000003"
    assert torch.load(ckpt / "objective.pt", weights_only=True) == {"seen": 3}
    assert json.loads((ckpt / "state.json").read_text())["settings"]["objective"] == "counting"
    # another objective cannot pick this run up: one line naming both, nothing trained
    with pytest.raises(ParameterError, match=r"^resume: .*step-00000003 was trained with the objective "
                                             r"'counting', this run asks for 'kd'"):
        train(cand, sd_teacher, sd_cache, replace(cfg, objective="kd"), tmp_path / "split", device="cpu",
              resume="latest")
    good = (ckpt / "objective.pt").read_bytes()
    (ckpt / "objective.pt").write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(ArchsearchError, match=r"objective\.pt: cannot read the objective's state \("):
        train(cand, sd_teacher, sd_cache, cfg, tmp_path / "split", device="cpu", resume="latest")
    (ckpt / "objective.pt").write_bytes(good)
    res = train(cand, sd_teacher, sd_cache, cfg, tmp_path / "split", device="cpu", resume="latest")
    assert res.start_step == 3 and res.loss_curve == straight.loss_curve[3:]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_and_accumulation_keep_the_objective(sd, sd_cache, sd_teacher, tmp_path):
    cand = _tiny_candidate()
    base = dict(checkpoint_every=0, ema_decay=0, init_from_teacher=False)
    plain = train(cand, sd_teacher, sd_cache, TrainConfig(proxy=_proxy(sd, steps=2), **base), tmp_path / "a",
                  device="cpu")
    ckpt = train(cand, sd_teacher, sd_cache, TrainConfig(proxy=_proxy(sd, steps=2), gradient_checkpointing=True,
                                                          **base), tmp_path / "b", device="cpu")
    assert ckpt.loss_curve == pytest.approx(plain.loss_curve, rel=1e-5)
    acc = train(cand, sd_teacher, sd_cache, TrainConfig(proxy=_proxy(sd, steps=2, batch=1), grad_accum=2, **base),
                tmp_path / "c", device="cpu")
    assert len(acc.loss_curve) == 2 and acc.samples_per_s > 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["settings"]["grad_accum"] == 2


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(sd, sd_cache, sd_teacher, tmp_path, monkeypatch):
    from accelerate import Accelerator

    cand = _tiny_candidate()
    cfg = TrainConfig(proxy=_proxy(sd, steps=4), checkpoint_every=2, keep=3)
    real = Accelerator.save_state
    calls = []

    def dying(self, output_dir=None, **kw):
        calls.append(output_dir)
        real(self, output_dir, **kw)
        if len(calls) == 2:  # the second checkpoint dies half-written
            raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(Accelerator, "save_state", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cand, sd_teacher, sd_cache, cfg, tmp_path / "o", device="cpu")
    ck = tmp_path / "o" / "checkpoints"
    assert [p.name for p in list_checkpoints(ck)] == ["step-00000002"]
    assert (ck / ".tmp-step-00000004").is_dir()  # the half-written one never got its name
    monkeypatch.setattr(Accelerator, "save_state", real)
    res = train(cand, sd_teacher, sd_cache, cfg, tmp_path / "o", device="cpu", resume="latest")
    assert res.start_step == 2 and [p.name for p in list_checkpoints(ck)] == ["step-00000002", "step-00000004"]
    assert not list(ck.glob(".tmp-*"))


def test_nan_stops_naming_the_step_or_skips(sd, sd_cache, sd_teacher, tmp_path):
    cand = _tiny_candidate()
    cfg = TrainConfig(proxy=_proxy(sd, steps=6, lr=1e9), checkpoint_every=1, clip=None, warmup=0, ema_decay=0)
    with pytest.raises(ArchsearchError, match=r"^training stopped: the loss is (nan|inf) at step \d+ of 6"):
        train(cand, sd_teacher, sd_cache, cfg, tmp_path / "o", device="cpu")
    for p in list_checkpoints(tmp_path / "o" / "checkpoints"):
        w = ArchUNet  # every checkpoint that exists holds finite weights
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(str(p / "accelerate" / "model.safetensors")).values())
    assert w is ArchUNet


def _layout(layers, up_layers, width=32, heads=2, head_dim=16, ffn=2, ctx=(32, 8), res=8, mid_attn="self_cross"):
    """A one-assignment SD-like space (two stages, cross attention at the low resolution)."""
    from archsearch.spec import load_space_text

    text = f"""\
schema_version: 1
name: sdlike
kind: image
latent_channels: 4
resolution: {res}
context_dim: {ctx[0]}
context_length: {ctx[1]}
norm_groups: 8
defaults: {{resnet_variant: plain, head_dim: {head_dim}, ffn_type: geglu, ffn_ratio: {ffn}}}
stages:
  - {{channels: {width}, resnet_blocks: {layers[0]}, attention: none}}
  - {{channels: {2 * width}, resnet_blocks: {layers[1]}, attention: cross, transformer_depth: 1}}
mid: {{resnet_blocks: 2, attention: {mid_attn}, transformer_depth: 1}}
up: [{{resnet_blocks: {up_layers[0]}}}, {{resnet_blocks: {up_layers[1]}}}]
"""
    return sample(load_space_text(text, "sdlike.yaml"), 0)


def test_init_from_teacher_copies_what_the_layouts_imply():
    """BK-SDM-style students (fewer layers per stage) from an SD-like teacher."""
    cand = _layout
    torch.manual_seed(0)
    teacher = build_model(cand((2, 2), (3, 3)))
    student = build_model(cand((1, 2), (2, 3)))
    rep = init_from_teacher(student, teacher)
    total = len({id(t) for t in student.state_dict(keep_vars=True).values()})
    # same widths: every tensor has a source; only up-path ResNets whose skip input differs
    # (the student pops other skips than the teacher layer it maps to) keep their input side new
    assert rep.counts == {"copied": total - 7, "skipped": 7, "new": 0}
    assert {n.split("/")[0] for n, _, _ in rep.skipped} == {"up.0.layer1.resnet", "up.1.layer2.resnet"}
    assert all(n.split("/")[1].split(".")[1] in ("norm1", "conv1", "conv_shortcut") for n, _, _ in rep.skipped)
    assert rep.layer_map["down.0.layer0.resnet"] == "down.0.layer0.resnet"
    assert rep.layer_map["up.0.layer1.resnet"] == "up.0.layer2.resnet"  # 3 -> 2 layers: first and last kept
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    from archsearch.distill._init_from_teacher import unit_tensors

    su, tu = unit_tensors(student), unit_tensors(teacher)
    skipped = {n for n, _, _ in rep.skipped}
    for s_unit, t_unit in rep.layer_map.items():
        for k, v in su[s_unit].items():
            if f"{s_unit}/{k}" not in skipped:
                assert torch.equal(v, tu[t_unit][k]), (s_unit, k)
    assert s_sd.keys() and t_sd.keys()
    # a narrower student: tensors whose shapes differ are skipped, the rest are counted
    narrow = build_model(cand((1, 2), (2, 3), width=16))
    rep2 = init_from_teacher(narrow, teacher)
    assert rep2.counts["skipped"] > 0 and rep2.counts["new"] == 0
    assert sum(rep2.counts.values()) == len({id(t) for t in narrow.state_dict(keep_vars=True).values()})
    # a deeper student: the extra layer's tensors are new
    deep = build_model(cand((3, 2), (3, 3)))
    rep3 = init_from_teacher(deep, teacher)
    assert rep3.counts["new"] == len(unit_tensors(deep)["down.0.layer2.resnet"])


def test_init_from_a_diffusers_teacher_maps_its_blocks(sd):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet"))
    c = _layout((1, 1), (2, 2), width=16, heads=4, head_dim=8, ffn=4, ctx=(32, 16), res=16, mid_attn="cross")
    student = build_model(c)
    rep = init_from_teacher(student, unet)
    assert rep.counts["copied"] > 100
    sd_ = unet.state_dict()
    s = student.state_dict()
    i = next(i for i, b in enumerate(student.block_specs) if b.name == "down.1.layer0.resnet")
    assert torch.equal(s[f"blocks.{i}.block.conv1.weight"], sd_["down_blocks.1.resnets.0.conv1.weight"])
    j = next(i for i, b in enumerate(student.block_specs) if b.name == "down.1.layer0.transformer")
    assert torch.equal(s[f"blocks.{j}.layers.0.attn2.to_k.weight"],
                       sd_["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"])


def test_video_run_trains_only_temporal_layers_on_loaded_spatial_ones(tmp_path, teacher_cache):
    from archsearch.spec import load_space

    space = load_space(ROOT / "search_spaces" / "tiny_video.yaml")
    video = sample(space, 0)
    proxy = ProxyConfig.from_dict({"width_mult": 0.5, "resolution": 8, "frames": 2, "steps": 3, "batch": 1,
                                   "holdout": 2, "teacher": {"builtin": "video", "train_steps": 3, "width": 32,
                                                             "data_size": 8}}, kind="video")
    teacher = load_teacher(proxy, "video", cache_dir=teacher_cache, threads=1)
    small = video.for_proxy(width_mult=0.5, resolution=8, frames=2, context_dim=teacher.context_dim,
                            context_length=teacher.context_length, latent_channels=teacher.latent_channels)
    d = small.to_dict()
    d.pop("id", None)
    for st in [*d["stages"], *(d.get("up") or []), *([d["mid"]] if d.get("mid") else [])]:
        st["temporal"] = {"type": "none", "count": 0, "placement": "after_resnet"}
    image = build_model(Candidate.from_dict({**d, "kind": "image", "frames": 1}))
    image.save_pretrained(tmp_path / "image")
    cfg = TrainConfig(proxy=proxy, spatial_from=str(tmp_path / "image"), init_from_teacher=False, ema_decay=0,
                      checkpoint_every=0)
    res = train(video, teacher, None, cfg, tmp_path / "v", device="cpu")
    trained = ArchUNet.from_pretrained(tmp_path / "v")
    loaded = {s.name: b for s, b in zip(image.block_specs, image.blocks)}
    changed_temporal = False
    for spec, block in zip(trained.block_specs, trained.blocks):
        if spec.type.startswith("temporal"):
            changed_temporal = True
            continue
        for k, v in block.state_dict().items():
            assert torch.equal(v, loaded[spec.name].state_dict()[k]), (spec.name, k)
    assert changed_temporal and res.metrics["trainable_params"] < res.params
    assert res.metrics["spatial_report"]["copied"] > 0


# --------------------------------------------------------------------------- processes


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_doubled_batch(sd, sd_cache, tmp_path, tiny_table):
    cand = _tiny_candidate().save(tmp_path / "c.yaml")
    spec = make_spec(tmp_path, tiny_table, proxy={"teacher": {"diffusers": str(sd)}, "resolution": 16})
    common = ["train", str(cand), "--spec", str(spec), "--data", str(sd_cache), "--steps", "4", "--width-mult", "0.5",
              "--device", "cpu", "--log-every", "1", "--checkpoint-every", "0", "--sample-every", "0",
              "--eval-every", "0", "--lr", "0.001"]
    one = subprocess.run([sys.executable, "-m", "archsearch.cli.main", *common, "--batch", "4", "--out",
                          str(tmp_path / "one")], env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr + one.stdout
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", "-m", "archsearch.cli.main", *common, "--batch", "2", "--out",
                          str(tmp_path / "two")], env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-2000:]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2
    a = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "one" / "log.csv"))]
    b = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "two" / "log.csv"))]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (a, b)


@pytest.mark.slow
def test_kill_9_while_checkpointing_leaves_a_loadable_checkpoint(sd, sd_cache, tmp_path, tiny_table):
    cand = _tiny_candidate().save(tmp_path / "c.yaml")
    spec = make_spec(tmp_path, tiny_table, proxy={"teacher": {"diffusers": str(sd)}, "resolution": 16})
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "archsearch.cli.main", "train", str(cand), "--spec", str(spec), "--data",
           str(sd_cache), "--steps", "60", "--width-mult", "0.5", "--batch", "2", "--device", "cpu",
           "--checkpoint-every", "1", "--keep", "2", "--sample-every", "0", "--eval-every", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ck = out / "checkpoints"
    deadline = time.time() + 180
    caught = False
    while time.time() < deadline and proc.poll() is None:
        if ck.is_dir() and list_checkpoints(ck) and any(ck.glob(".tmp-*")):
            caught = True
            break
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught, "the run ended before a checkpoint was being written"
    found = list_checkpoints(ck)
    assert found, "no complete checkpoint survived"
    from safetensors.torch import load_file

    load_file(str(found[-1] / "accelerate" / "model.safetensors"))  # loadable
    r = subprocess.run(cmd + ["--resume", "latest"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 60 and m["start_step"] >= 1

"""`archsearch train` and `generate` as a hostile user and a new user try them: the user's files
are never overwritten, two runs never share a folder, every bad flag is one line, a damaged
checkpoint falls back to the one before it, the loss curve survives a resume, and video runs
sample and draw at the model's frame count without a crash (issues 23 and 24)."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from archsearch.candidate import sample
from archsearch.cli.main import app
from archsearch.distill import LoopCallback, ProxyConfig, TrainConfig, list_checkpoints, load_teacher, train
from archsearch.errors import ArchsearchError, ParameterError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_fixtures as F  # noqa: E402
from conftest import SPACES, TINY_PROXY  # noqa: E402
from search_helpers import tiny_spec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture
def cand(tmp_path, tiny_space):
    c = sample(tiny_space, 0)
    return c.save(tmp_path / f"{c.id}.yaml")


def _proxy(**kw) -> ProxyConfig:
    return ProxyConfig.from_dict({**TINY_PROXY, "steps": 4, "batch": 2, "holdout": 4, **kw})


def _error_line(output: str) -> str:
    """The one ``error:`` line of a refused command (and nothing that looks like a traceback or a box)."""
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output and "╭" not in output, output
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --------------------------------------------------------------------------- the output folder


def test_train_refuses_a_folder_of_the_users_files(tmp_path, cand, cached_teacher):
    """A user's model, a latent cache, a folder inside the data: one line, nothing changed --
    with --overwrite too, and before the teacher loads."""
    spec = tiny_spec(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "model"}')
    (mine / "model.safetensors").write_bytes(b"my weights")
    before = _files(mine)
    for extra in ([], ["--overwrite"], ["--resume", "latest"]):
        r = runner.invoke(app, ["train", str(cand), "--spec", str(spec), "--steps", "2", "--out", str(mine),
                                "--device", "cpu", *extra])
        assert r.exit_code == 2, r.output
        line = _error_line(r.output)
        assert line.startswith(f"error: --out: {mine} holds files archsearch train did not write "
                               "(config.json, model.safetensors); nothing was changed"), line
        assert _files(mine) == before and not any(mine.glob(".*"))

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.json").write_text("{}")
    (cache / "shard-00000.safetensors").write_bytes(b"x")
    r = runner.invoke(app, ["train", str(cand), "--spec", str(spec), "--out", str(cache), "--device", "cpu"])
    assert r.exit_code == 2 and "holds a latent cache (archsearch data prepare)" in _error_line(r.output)
    r = runner.invoke(app, ["train", str(cand), "--spec", str(spec), "--data", str(cache), "--out",
                            str(cache / "run"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert f"error: --out: {cache / 'run'} is inside the data folder {cache}" in _error_line(r.output)
    assert not (cache / "run").exists()


def test_an_earlier_run_is_resumed_or_overwritten_only_when_asked(tmp_path, tiny_space, tiny_teacher):
    c = sample(tiny_space, 0)
    out = tmp_path / "o"
    cfg = TrainConfig(proxy=_proxy(steps=4), checkpoint_every=2, keep=5, log_every=1, ema_decay=0)
    train(c, tiny_teacher, None, cfg, out, device="cpu")
    assert (out / ".archsearch-train.json").is_file()
    (out / "notes.txt").write_text("the user's own notes")
    first = _weights(out)
    with pytest.raises(ParameterError, match=r"^out: .* holds an earlier archsearch train run, last checkpoint "
                                             r"step-00000004 \(allowed: resume latest to continue it, overwrite to "
                                             r"start it again, or a new folder\)$"):
        train(c, tiny_teacher, None, cfg, out, device="cpu")
    assert all(torch.equal(first[k], v) for k, v in _weights(out).items())
    with pytest.raises(ParameterError, match=r"^overwrite: and resume both given"):
        train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest", overwrite=True)

    # overwrite: train's own files go (the old step-4 checkpoint with them), the user's stay
    short = TrainConfig(proxy=_proxy(steps=2, seed=1), checkpoint_every=0, log_every=1, ema_decay=0)
    res = train(c, tiny_teacher, None, short, out, device="cpu", overwrite=True)
    assert res.steps == 2 and (out / "notes.txt").read_text() == "the user's own notes"
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002"]
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


class _Also(LoopCallback):
    """At step ``at``, run ``fn`` (a second train on the same folder) and keep what it raised."""

    def __init__(self, at, fn):
        self.at, self.fn, self.raised = at, fn, []

    def on_step(self, state):
        if state.step == self.at:
            try:
                self.fn()
            except ArchsearchError as exc:
                self.raised.append(str(exc))


def test_a_second_train_on_a_busy_folder_refuses(tmp_path, tiny_space, tiny_teacher):
    c = sample(tiny_space, 0)
    out = tmp_path / "o"
    cfg = TrainConfig(proxy=_proxy(steps=3), checkpoint_every=1, log_every=1, ema_decay=0)
    second = _Also(2, lambda: train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest"))
    third = _Also(2, lambda: train(c, tiny_teacher, None, cfg, out, device="cpu", overwrite=True))
    train(c, tiny_teacher, None, cfg, out, device="cpu", callbacks=[second, third])
    busy = (f"out: {out} is being trained into by another archsearch train right now (allowed: one run per folder "
            "at a time)")
    assert second.raised == [busy] and third.raised == [busy]
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3]  # each row once
    # the lock goes with the run: the folder resumes afterwards
    res = train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest")
    assert res.start_step == 3


class _CtrlC(LoopCallback):
    def __init__(self, at):
        self.at = at

    def on_step(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_leaves_a_run_that_resumes_with_every_row_once(tmp_path, tiny_space, tiny_teacher):
    c = sample(tiny_space, 0)
    out = tmp_path / "o"
    cfg = TrainConfig(proxy=_proxy(steps=5), checkpoint_every=2, log_every=1, ema_decay=0)
    with pytest.raises(KeyboardInterrupt):
        train(c, tiny_teacher, None, cfg, out, device="cpu", callbacks=[_CtrlC(3)])
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002"]
    res = train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest")  # the lock went with the run
    assert res.start_step == 2
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3, 4, 5]
    curve = json.loads((out / "metrics.json").read_text())["loss_curve"]
    assert len(curve) == 5 and curve[2:] == res.loss_curve and all(math.isfinite(v) for v in curve)


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("flag,value,allowed", [
    ("--steps", "0", "an integer >= 1"), ("--batch", "0", "an integer >= 1"), ("--seed", "-1", "an integer >= 0"),
    ("--keep", "0", "an integer >= 1"), ("--grad-accum", "0", "an integer >= 1"),
    ("--checkpoint-every", "-1", "an integer >= 0"), ("--log-every", "-1", "an integer >= 0"),
    ("--eval-every", "-1", "an integer >= 0"), ("--sample-every", "-1", "an integer >= 0"),
    ("--warmup", "-1", "an integer >= 0"), ("--resolution", "0", "an integer >= 4"),
    ("--width-mult", "0", "a number in (0, 4]"),
])
def test_train_numeric_flags_are_one_line_errors(tmp_path, cand, cached_teacher, flag, value, allowed):
    spec = tiny_spec(tmp_path)
    r = runner.invoke(app, ["train", str(cand), "--spec", str(spec), "--out", str(tmp_path / "o"), "--device", "cpu",
                            flag, value])
    assert r.exit_code == 2, r.output
    line = _error_line(r.output)
    assert line.startswith(f"error: {flag}: bad value ") and f"(allowed: {allowed}" in line, line
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- resume


def _damage_ema(ckpt: Path) -> str:
    p = ckpt / "ema.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return f"{p}: not a readable safetensors file ("


def _damage_state(ckpt: Path) -> str:
    (ckpt / "state.json").write_bytes(os.urandom(256))
    return f"{ckpt / 'state.json'}: not readable JSON ("


def _damage_model(ckpt: Path) -> str:
    (ckpt / "accelerate" / "model.safetensors").unlink()
    return f"{ckpt / 'accelerate' / 'model.safetensors'}: missing"


@pytest.mark.slow
def test_resume_latest_falls_back_past_a_damaged_checkpoint(tmp_path, tiny_space, tiny_teacher):
    """A truncated ema.safetensors, random bytes in state.json, a deleted model file: named in one
    line, the checkpoint before taken, and the run ends bit for bit where a straight run ends."""
    c = sample(tiny_space, 0)
    out = tmp_path / "o"
    cfg = TrainConfig(proxy=_proxy(steps=6), checkpoint_every=2, keep=5, log_every=1)
    train(c, tiny_teacher, None, cfg, out, device="cpu")
    straight, curve = _weights(out), json.loads((out / "metrics.json").read_text())["loss_curve"]
    assert len(curve) == 6
    last = out / "checkpoints" / "step-00000006"
    for damage in (_damage_ema, _damage_state, _damage_model):
        said: list[str] = []
        named = damage(last)
        res = train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest", log=said.append)
        line = next(s for s in said if "damaged" in s)
        assert line.startswith(f"checkpoint step-00000006 is damaged ({named}") and \
            line.endswith("): falling back to step-00000004"), line
        assert res.start_step == 4 and "\n" not in line
        assert all(torch.equal(straight[k], v) for k, v in _weights(out).items()), damage.__name__
        # metrics.json keeps the losses from before the resume
        assert json.loads((out / "metrics.json").read_text())["loss_curve"] == curve

    # nothing loadable left: one line naming the file, no traceback
    for ckpt in list_checkpoints(out / "checkpoints"):
        _damage_model(ckpt)
    with pytest.raises(ArchsearchError, match=r"model\.safetensors: missing; no earlier complete checkpoint in "):
        train(c, tiny_teacher, None, cfg, out, device="cpu", resume="latest")


@pytest.mark.slow
def test_resume_with_other_steps_says_so_or_refuses(tmp_path, cand, cached_teacher):
    spec = tiny_spec(tmp_path)
    out = tmp_path / "o"
    common = ["train", str(cand), "--spec", str(spec), "--out", str(out), "--device", "cpu", "--sample-every", "0",
              "--eval-every", "0", "--checkpoint-every", "2"]
    assert runner.invoke(app, [*common, "--steps", "4"]).exit_code == 0
    r = runner.invoke(app, [*common, "--steps", "6", "--resume", "latest"])
    assert r.exit_code == 0, r.output
    assert ("note: step-00000004 is of a 4-step run and this run has 6 steps: the learning-rate schedule now spans "
            "6 steps from step 5 on (resume with 4 steps to continue exactly)") in r.output
    assert len(json.loads((out / "metrics.json").read_text())["loss_curve"]) == 6
    r = runner.invoke(app, [*common, "--steps", "3", "--resume", "latest"])
    assert r.exit_code == 2
    assert _error_line(r.output).startswith("error: --steps: bad value 3 (allowed: an integer >= 6, the step of the "
                                            "checkpoint ")


# --------------------------------------------------------------------------- samples and evaluation


def test_a_failing_sample_grid_or_evaluation_is_logged_and_skipped(tmp_path, tiny_space, tiny_teacher, monkeypatch):
    import archsearch.distill._samples as samples
    from archsearch.distill import _train

    def boom(*a, **k):
        raise RuntimeError("the sampler fell over")

    monkeypatch.setattr(samples, "sample_grid", boom)
    real, calls = _train._Run.holdout_kd, []

    def flaky(self, weights="raw"):
        calls.append(weights)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(self, weights)

    monkeypatch.setattr(_train._Run, "holdout_kd", flaky)
    said: list[str] = []
    cfg = TrainConfig(proxy=_proxy(steps=4), checkpoint_every=0, sample_every=2, eval_every=1, log_every=1)
    res = train(sample(tiny_space, 0), tiny_teacher, None, cfg, tmp_path / "o", device="cpu", log=said.append)
    assert res.steps == 4 and math.isfinite(res.quality)
    assert "held-out evaluation at step 1 failed, skipped: RuntimeError: out of memory" in said
    assert "sample grid at step 2 failed, skipped: RuntimeError: the sampler fell over" in said
    assert "sample grid at step 4 failed, skipped: RuntimeError: the sampler fell over" in said
    # a checkpoint came before the first grid, though none was due until the end
    assert [p.name for p in list_checkpoints(tmp_path / "o" / "checkpoints")] == ["step-00000002", "step-00000004"]
    rows = list(csv.DictReader(open(tmp_path / "o" / "log.csv")))
    assert rows[0]["holdout_kd"] == "" and rows[1]["holdout_kd"] != ""


def test_a_sample_grid_has_a_teacher_row_and_its_prompts(tmp_path, tiny_space, tiny_teacher):
    """Issue 24: grids had no prompt labels and no teacher row. Now: a student row, below it the
    teacher with the same seeds (the same in every grid of a run), the prompts under the columns."""
    from PIL import Image

    prompts = ("a red circle", "a blue square on a very long caption that does not fit")
    cfg = TrainConfig(proxy=_proxy(steps=2), checkpoint_every=0, sample_every=1, sample_steps=2, ema_decay=0,
                      log_every=1, sample_prompts=prompts, sample_seeds=(0, 1))
    train(sample(tiny_space, 0), tiny_teacher, None, cfg, tmp_path / "g", device="cpu")
    grids = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "g" / "samples").glob("*.png"))]
    assert len(grids) == 2
    side = 64  # 8x8 latents shown at 64 px
    w, h = grids[0].size
    left = w - 2 * side
    assert left > 0 and h > 2 * side  # a strip of row names on the left, the prompts under the grid
    student = [g.crop((left, 0, w, side)) for g in grids]
    teacher = [g.crop((left, side, w, 2 * side)) for g in grids]
    assert teacher[0].tobytes() == teacher[1].tobytes()  # drawn once, the same seeds in every grid
    assert student[0].tobytes() != teacher[0].tobytes()
    labels = grids[0].crop((left, 2 * side, w, h))
    assert labels.getextrema() != ((255, 255), (255, 255), (255, 255))  # the prompts are written there


def _gif_frames(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.n_frames


def test_builtin_video_run_samples_the_models_frames(tmp_path, tiny_video_space, teacher_cache):
    """The built-in video teacher: the grids are animated GIFs of the model's frame count, and a
    checkpoint is written before the first one."""
    proxy = ProxyConfig.from_dict({"width_mult": 0.5, "resolution": 8, "frames": 2, "steps": 2, "batch": 1,
                                   "holdout": 2, "teacher": {"builtin": "video", "train_steps": 3, "width": 32,
                                                             "data_size": 8}}, kind="video")
    teacher = load_teacher(proxy, "video", cache_dir=teacher_cache, threads=1)
    cfg = TrainConfig(proxy=proxy, checkpoint_every=0, sample_every=1, sample_steps=2, ema_decay=0,
                      sample_prompts=("a red circle", "a cat"), sample_seeds=(0, 1))
    train(sample(tiny_video_space, 0), teacher, None, cfg, tmp_path / "v", device="cpu")
    grids = sorted((tmp_path / "v" / "samples").iterdir())
    assert [p.name for p in grids] == ["step-00000001.gif", "step-00000002.gif"]
    assert _gif_frames(grids[0]) == 2  # the run's frame count
    assert [p.name for p in list_checkpoints(tmp_path / "v" / "checkpoints")] == ["step-00000001", "step-00000002"]


# --------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def sd_model(sd_checkpoint, tmp_path_factory):
    """An `archsearch train` output with a pipeline (the tiny SD teacher, 1 step on synthetic data)."""
    proxy = ProxyConfig.from_dict({"width_mult": 0.5, "resolution": 16, "steps": 1, "batch": 1, "holdout": 2,
                                   "teacher": {"diffusers": str(sd_checkpoint), "data_size": 4}})
    teacher = load_teacher(proxy, "image")
    out = tmp_path_factory.mktemp("sd-model") / "m"
    train(sample(load_space_tiny(), 0), teacher, None, TrainConfig(proxy=proxy, checkpoint_every=0, ema_decay=0),
          out, device="cpu")
    assert (out / "pipeline" / "model_index.json").is_file()
    return out


def load_space_tiny():
    from archsearch.spec import load_space

    return load_space(SPACES / "tiny.yaml")


def test_generate_never_overwrites_a_picture(sd_model, tmp_path):
    from PIL import Image

    mine = tmp_path / "pics"
    mine.mkdir()
    (mine / "0.png").write_bytes(b"the user's picture")
    (mine / "a-red-circle-0.png").write_bytes(b"another of the user's")
    before = _files(mine)
    args = ["generate", str(sd_model), "--prompt", "a red circle", "--steps", "2", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--out", str(mine), "-n", "2"])
    assert r.exit_code == 0, r.output
    after = _files(mine)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == ["a-red-circle-0-2.png", "a-red-circle-1.png"]
    png = Image.open(mine / "a-red-circle-1.png")
    assert png.text["prompt"] == "a red circle" and png.text["seed"] == "1" and png.size == (32, 32)

    # the default folder: a rerun adds pictures, it never replaces the last ones
    assert runner.invoke(app, args).exit_code == 0
    first = _files(sd_model / "generated")
    r = runner.invoke(app, args)
    assert r.exit_code == 0
    again = _files(sd_model / "generated")
    assert {k: again[k] for k in first} == first and len(again) == len(first) + 1
    assert str(sd_model / "generated" / "a-red-circle-0-2.png") in r.output


@pytest.mark.parametrize("flags,flag,allowed", [
    (["--guidance", "nan"], "--guidance", "a finite number >= 0"),
    (["--guidance", "inf"], "--guidance", "a finite number >= 0"),
    (["--guidance", "-1"], "--guidance", "a finite number >= 0"),
    (["-n", "100000"], "-n", "an integer in [1, 1000]"),
    (["-n", "0"], "-n", "an integer in [1, 1000]"),
    (["--steps", "100000"], "--steps", "an integer in [1, 1000], the scheduler's training timesteps"),
    (["--steps", "0"], "--steps", "an integer in [1, 1000]"),
    (["--seed", "-1"], "--seed", "an integer in [0, 2^63 - n]"),
    (["--height", "20"], "--height", "a multiple of 8 in [8, 4096] pixels"),
    (["--width", "0"], "--width", "a multiple of 8 in [8, 4096] pixels"),
    (["--frames", "16"], "--frames", "only for a video model"),
    (["--format", "mp4"], "--format", "png"),
])
def test_generate_bad_flags_are_one_line_errors(sd_model, tmp_path, flags, flag, allowed):
    r = runner.invoke(app, ["generate", str(sd_model), "--prompt", "x", "--device", "cpu", "--out",
                            str(tmp_path / "g"), *flags])
    assert r.exit_code == 2, r.output
    line = _error_line(r.output)
    assert line.startswith(f"error: {flag}: bad value ") and f"(allowed: {allowed}" in line, line
    assert not (tmp_path / "g").exists()  # refused before anything loads or is written


def test_generate_names_a_damaged_pipeline_file(sd_model, tmp_path):
    import shutil

    broken = tmp_path / "m"
    shutil.copytree(sd_model / "pipeline", broken / "pipeline")
    index = broken / "pipeline" / "model_index.json"
    for garbage in (os.urandom(64), b"[1, 2]", b'{"unet": "no"}'):
        index.write_bytes(garbage)
        r = runner.invoke(app, ["generate", str(broken), "--prompt", "x", "--steps", "1", "--device", "cpu"])
        assert r.exit_code == 2, r.output
        assert _error_line(r.output).startswith(f"error: {index}: "), r.output
    shutil.copy(sd_model / "pipeline" / "model_index.json", index)
    (broken / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    r = runner.invoke(app, ["generate", str(broken), "--prompt", "x", "--steps", "1", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert _error_line(r.output).startswith(f"error: {broken / 'pipeline'}: cannot load the pipeline ("), r.output


# --------------------------------------------------------------------------- a text-to-video pipeline


def build_t2v_checkpoint(root: Path) -> Path:
    """A tiny ``TextToVideoSDPipeline`` (UNet3D, the /2 VAE, a CLIP text encoder), saved."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(F.write_clip_tokenizer(root / "_tok")), local_files_only=True)
    unet = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"), up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    pipe = TextToVideoSDPipeline(vae=F._vae(), text_encoder=F._clip(vocab=len(tok)), tokenizer=tok, unet=unet,
                                 scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False,
                                                         set_alpha_to_one=False, steps_offset=1))
    pipe.save_pretrained(str(root))
    F._rmtree(root / "_tok")
    return root


@pytest.mark.slow
def test_text_to_video_teacher_trains_samples_and_generates_at_the_models_frames(tmp_path, tiny_video_space):
    """The issue's crash: the pipeline's default 16 frames against a model built for 4."""
    t2v = build_t2v_checkpoint(tmp_path / "t2v")
    proxy = ProxyConfig.from_dict({"resolution": 8, "frames": 4, "steps": 2, "batch": 1, "holdout": 2,
                                   "width_mult": 0.5, "teacher": {"diffusers": str(t2v), "data_size": 4}},
                                  kind="video")
    teacher = load_teacher(proxy, kind="video")
    out = tmp_path / "v"
    cfg = TrainConfig(proxy=proxy, checkpoint_every=0, sample_every=2, sample_steps=2, ema_decay=0,
                      sample_prompts=("a red circle",), sample_seeds=(0,))
    said: list[str] = []
    res = train(sample(tiny_video_space, 0), teacher, None, cfg, out, device="cpu", log=said.append)
    assert not [s for s in said if "failed" in s], said
    assert _gif_frames(out / "samples" / "step-00000002.gif") == 4 and res.pipeline is not None

    r = runner.invoke(app, ["generate", str(out), "--prompt", "a red circle", "--steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert _gif_frames(out / "generated" / "a-red-circle-0.gif") == 4
    r = runner.invoke(app, ["generate", str(out), "--prompt", "a red circle", "--steps", "2", "--device", "cpu",
                            "--frames", "4", "--format", "mp4"])
    assert r.exit_code == 0, r.output
    import av

    with av.open(str(out / "generated" / "a-red-circle-0.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 4
    r = runner.invoke(app, ["generate", str(out), "--prompt", "x", "--frames", "16", "--device", "cpu"])
    assert r.exit_code == 2
    assert _error_line(r.output) == ("error: --frames: bad value 16 (allowed: 4, the frame count this model was "
                                     "built for)")
    # issue 23, end to end: the trained video model exports as the Swift app's UNet package,
    # every op of its program evaluated against torch
    from archsearch.export import package_io

    r = runner.invoke(app, ["export", str(out), "--format", "coreml", "-o", str(tmp_path / "Unet.mlpackage")])
    assert r.exit_code == 0, r.output
    inputs, outputs = package_io(tmp_path / "Unet.mlpackage")
    assert [t.name for t in inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert inputs[0].shape[:3] == (2, 4, 4) and [t.name for t in outputs] == ["noise_pred"]
    assert "not checked" not in r.output and "numerics" in r.output

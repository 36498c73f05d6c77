"""Few-step generation (issue 20): a model trained with ``train`` step-distilled by ``step``
(SnapFusion), ``adversarial`` (SnapGen) and ``lcm``, through the same ``train`` loop.

* the built-in teacher path: each method's distilled student is closer to the teacher's 50-step
  samples (same prompts and seeds, latent MSE) than the same student before distillation drawn
  with the same scheduler, by ``MARGIN``; the same run with a no-op objective is not;
* the diffusers path: the exported pipeline draws through plain
  ``StableDiffusionPipeline.from_pretrained`` with the method's scheduler, in the steps it records,
  one UNet call per step;
* kill -9 and ``--resume latest``: the same weights and the same objective state (the
  discriminator, its optimizer, the LCM target network) as a straight run, bit for bit;
* video: adversarial distillation of a tiny video model with temporal discriminator heads runs,
  resumes exactly and keeps the frozen spatial layers frozen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEACHER
from search_helpers import crash_at
from typer.testing import CliRunner

from archsearch.candidate import sample
from archsearch.cli.main import app
from archsearch.distill import (
    FEWSTEP_FILE,
    FewStepConfig,
    ProxyConfig,
    TrainConfig,
    draw_latents,
    fewstep_defaults,
    list_checkpoints,
    load_teacher,
    sample_mse,
    step_distill,
    teacher_latents,
    train,
)
from archsearch.errors import ParameterError
from archsearch.spec import load_space

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

#: a v-prediction built-in teacher (its 50-step samples stay in the data's range even after 10
#: training steps; an epsilon teacher this young draws latents of std ~20 from t = 980)
V_PROXY = {"resolution": 8, "steps": 30, "batch": 4, "holdout": 8, "width_mult": 0.5, "lr": 2e-3,
           "prediction": "v_prediction", "teacher": dict(TINY_TEACHER)}
#: the objectives' settings of these tests (a guidance range the 10-step teacher can follow)
OPTIONS = {"guidance": 2.0, "guidance_range": [1.0, 3.0], "teacher_steps": 4, "ddim_steps": 10, "loss": "l2"}
PROMPTS = ["a red circle", "a blue square at the top", "a green cat", "a small red dog"]
SEEDS = [0, 1, 2, 3]
#: the distilled student's MSE must be below MARGIN x the undistilled one's
MARGIN = 0.8
#: the steps each method is compared at: step distillation follows the teacher's trajectory, so
#: its 4-step samples are the teacher's from the same seed; adversarial and LCM draw as
#: consistency models (x0, then fresh noise: LCMScheduler), so only their first step is the
#: teacher's sample from that seed (their later steps refine with new noise)
COMPARED_AT = {"step": 4, "adversarial": 1, "lcm": 1}
#: training steps: consistency distillation propagates from the clean end one skip at a time
TRAIN_STEPS = {"step": 30, "adversarial": 30, "lcm": 80}


@pytest.fixture(scope="module")
def v_teacher(teacher_cache):
    return load_teacher(ProxyConfig.from_dict(V_PROXY), "image", cache_dir=teacher_cache, threads=1)


@pytest.fixture(scope="module")
def trained(v_teacher, tmp_path_factory) -> Path:
    """The one student of these tests: trained with ``train`` (30 KD steps) against the v teacher."""
    out = tmp_path_factory.mktemp("fewstep") / "trained"
    cand = sample(load_space(ROOT / "search_spaces" / "tiny.yaml"), 0)
    train(cand, v_teacher, None, TrainConfig(proxy=ProxyConfig.from_dict(V_PROXY), checkpoint_every=0, ema_decay=0,
                                             log_every=100), out, device="cpu")
    return out


def _config(method: str, train_steps: int = 30, **train_kw) -> FewStepConfig:
    return FewStepConfig(method=method, steps=4, train_steps=train_steps, lr=2e-3, options=dict(OPTIONS),
                         train={"checkpoint_every": 0, "ema_decay": 0.0, "log_every": 100, **train_kw},
                         evaluate=False)


def _mse(model, teacher, ref, steps, **kw) -> float:
    return sample_mse(draw_latents(model, teacher, PROMPTS, SEEDS, steps=steps, guidance=2.0, device="cpu", **kw), ref)


# --------------------------------------------------------------------------- the built-in teacher


@pytest.mark.slow
@pytest.mark.parametrize("method", ["step", "adversarial", "lcm"])
def test_distilled_student_is_closer_to_the_teachers_50_steps(method, trained, v_teacher, tmp_path, monkeypatch):
    ref = teacher_latents(v_teacher, (4, 8, 8), PROMPTS, SEEDS, steps=50, guidance=2.0)
    out = tmp_path / method
    res = step_distill(trained, out, _config(method, TRAIN_STEPS[method]), teacher=v_teacher, device="cpu")
    rec = json.loads((out / FEWSTEP_FILE).read_text())
    assert rec["steps"] == 4 and rec["calls_per_step"] == 1 and rec["prediction"] == "v_prediction"
    assert rec["scheduler"]["class"] == ("DDIMScheduler" if method == "step" else "LCMScheduler")
    assert res.metrics["fewstep"]["calls_per_step"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fewstep"]["method"] == method and metrics["settings"]["init_from"] == str(trained)
    n = COMPARED_AT[method]
    before = _mse(trained, v_teacher, ref, n, scheduler_of=out)  # the same scheduler, guided: 2 calls a step
    after = _mse(out, v_teacher, ref, n)
    assert after < MARGIN * before, (method, after, before)

    # a no-op objective (the same run, the student left as it was) does not pass
    from archsearch.distill import OBJECTIVES

    real = OBJECTIVES[method]

    def no_op(ctx):
        obj = real(ctx)
        obj.step_loss = lambda forward, batch: (forward(batch.xt, batch.t, batch.ctx)[0].sum() * 0.0, {})
        return obj

    monkeypatch.setitem(OBJECTIVES, method, no_op)
    step_distill(trained, tmp_path / "noop", _config(method, 2), teacher=v_teacher, device="cpu")  # (no-op: any steps)
    assert not _mse(tmp_path / "noop", v_teacher, ref, n) < MARGIN * before


def test_settings_and_inputs_are_checked_in_one_line(trained, v_teacher, tmp_path):
    def refused(match, **kw):
        cfg = {"method": "step", **kw}
        with pytest.raises(ParameterError, match=match):
            FewStepConfig(**cfg).check()

    refused(r"^method: bad value 'turbo' \(allowed: step, adversarial, lcm\)$", method="turbo")
    refused(r"^steps_from: bad value 12 \(allowed: steps x 2\^k \(8, 16, \.\.\.\)\)$",
            options={"steps_from": 12, "progressive": True})
    refused(r"^guidance_range: bad value \[5, 2\] \(allowed: two numbers lo <= hi, lo >= 1\)$",
            options={"guidance_range": [5, 2]})
    refused(r"^nope: unknown setting", options={"nope": 1})
    refused(r"^ema: not a setting of a few-step run", train={"ema": 0.5})
    with pytest.raises(ParameterError, match=r"^model: .*: no trained model here"):
        step_distill(tmp_path, tmp_path / "o", _config("step"), teacher=v_teacher, device="cpu")
    with pytest.raises(ParameterError, match=r"^out: .* is the trained model's folder"):
        step_distill(trained, trained / "o", _config("step"), teacher=v_teacher, device="cpu")
    r = runner.invoke(app, ["fewstep", str(trained), "--method", "lcm", "--ddim-steps", "1", "--out",
                            str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 2 and r.output.startswith("error: --ddim-steps: bad value 1 (allowed: an integer >= 2)"), \
        r.output
    assert "Examples" in runner.invoke(app, ["fewstep", "--help"]).output


def test_progressive_rounds_hand_over_to_the_previous_student(trained, v_teacher, tmp_path):
    """32 -> 16 -> 8 -> 4 in three rounds: the loss log names the round, the checkpoint carries the
    frozen teacher of the current round."""
    cfg = _config("step", train_steps=6, checkpoint_every=5, log_every=1)
    cfg.options.update(steps_from=32, progressive=True)
    res = step_distill(trained, tmp_path / "p", cfg, teacher=v_teacher, device="cpu")
    assert len(res.loss_curve) == 6
    state = torch.load(list_checkpoints(tmp_path / "p" / "checkpoints")[0] / "objective.pt", weights_only=True)
    assert state["round"] == 2 and "twin" in state  # after step 5 of 6: the third round (8 -> 4)


# --------------------------------------------------------------------------- the diffusers path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lcm", "step"])
def test_the_pipeline_draws_in_its_steps_with_one_call_each(method, sd_checkpoint, tmp_path):
    sd = sd_checkpoint
    proxy = ProxyConfig.from_dict({"width_mult": 0.5, "resolution": 16, "steps": 2, "batch": 2, "holdout": 4,
                                   "lr": 1e-3, "teacher": {"diffusers": str(sd)}})
    teacher = load_teacher(proxy, "image")
    assert teacher.prediction == "epsilon"  # the student is v: the teacher's outputs are converted
    cand = sample(load_space(ROOT / "search_spaces" / "tiny.yaml"), 0)
    train(cand, teacher, None, TrainConfig(proxy=proxy, checkpoint_every=0, ema_decay=0), tmp_path / "t", device="cpu")
    out = tmp_path / method
    cfg = FewStepConfig(method=method, steps=4, train_steps=2, options={"ddim_steps": 10},
                        train={"checkpoint_every": 0}, evaluate=False)
    res = step_distill(tmp_path / "t", out, cfg, device="cpu")  # the teacher named by the trained run
    assert res.pipeline == out / "pipeline"
    defaults = fewstep_defaults(out / "pipeline")
    assert defaults["steps"] == 4 and defaults["guidance"] == 7.5 and defaults["calls_per_step"] == 1

    from diffusers import StableDiffusionPipeline

    import archsearch.distill._pipeline  # noqa: F401  (the module model_index.json names for the UNet)

    pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == {"lcm": "LCMScheduler", "step": "DDIMScheduler"}[method]
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.time_cond_proj_dim == 256  # the guidance scale is an input: no CFG batch
    calls = []
    pipe.unet.register_forward_hook(lambda m, a, kw, o: calls.append(a[0].shape[0]), with_kwargs=True)

    def draw(g):
        return pipe("a red circle", num_inference_steps=defaults["steps"], guidance_scale=g, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    img = draw(defaults["guidance"])
    assert calls == [1, 1, 1, 1] and img.shape == (32, 32, 3)
    assert abs(draw(2.0) - img).max() > 0  # another guidance scale, through the embedding
    from archsearch.distill import generate

    paths = generate(out, "a red circle", tmp_path / "gen", steps=defaults["steps"], device="cpu")
    assert len(paths) == 1 and paths[0].is_file()


# --------------------------------------------------------------------------- resume after kill -9


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "ARCHSEARCH_CACHE_DIR": str(cache)}


def _cli(trained: Path, out: Path, method: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "archsearch.cli.main", "--quiet", "fewstep", str(trained), "--method", method,
            "--steps-to", "4", "--train-steps", str(steps), "--lr", "0.002", "--guidance", "2",
            "--guidance-range", "1", "3", "--teacher-steps", "4", "--ddim-steps", "10", "--loss", "l2",
            "--checkpoint-every", "2", "--keep", "10", "--ema-decay", "0.9", "--log-every", "1", "--no-evaluate",
            "--device", "cpu", "--out", str(out)]


def _same_files(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _same_state(a, b, where="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_state(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


@pytest.mark.slow
@pytest.mark.parametrize("method", ["step", "adversarial", "lcm"])
def test_kill_9_then_resume_latest_is_the_straight_run(method, trained, v_teacher, teacher_cache, tmp_path):
    steps = 8
    cfg = FewStepConfig(method=method, steps=4, train_steps=steps, lr=2e-3, options=dict(OPTIONS), evaluate=False,
                        train={"checkpoint_every": 2, "keep": 10, "ema_decay": 0.9, "log_every": 1})
    straight = tmp_path / "straight"
    step_distill(trained, straight, cfg, teacher=v_teacher, device="cpu")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(trained, out, method, steps), env=_env(teacher_cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    ck = out / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list_checkpoints(ck):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    found = list_checkpoints(ck)
    assert found, err.decode()[-2000:]
    at = int(found[-1].name.split("-")[1])
    assert at < steps and not (out / "metrics.json").exists(), "the run ended before it was killed"
    res = step_distill(trained, out, cfg, teacher=v_teacher, device="cpu", resume="latest")
    assert res.start_step == at
    _same_files(straight, out)
    _same_files(straight / "raw", out / "raw")
    last = f"checkpoints/step-{steps:08d}/objective.pt"
    _same_state(torch.load(straight / last, weights_only=True), torch.load(out / last, weights_only=True))
    assert json.loads((straight / FEWSTEP_FILE).read_text()) == json.loads((out / FEWSTEP_FILE).read_text())
    # another objective's settings cannot pick the run up
    other = FewStepConfig(**{**cfg.__dict__, "options": {**OPTIONS, "guidance": 3.0}})
    with pytest.raises(ParameterError, match=r"^resume: the checkpoint was trained with other .* settings "
                                             r"\(guidance\)"):
        step_distill(trained, out, other, teacher=v_teacher, device="cpu", resume="latest")


# --------------------------------------------------------------------------- video


@pytest.mark.slow
def test_video_adversarial_with_temporal_heads_resumes_and_keeps_spatial_layers_frozen(tmp_path, teacher_cache):
    from archsearch.distill._spatial import is_temporal
    from archsearch.model import ArchUNet

    proxy = ProxyConfig.from_dict({"width_mult": 0.5, "resolution": 8, "frames": 2, "steps": 3, "batch": 1,
                                   "holdout": 2, "prediction": "v_prediction",
                                   "teacher": {"builtin": "video", "train_steps": 3, "width": 32, "data_size": 8}},
                                  kind="video")
    teacher = load_teacher(proxy, "video", cache_dir=teacher_cache, threads=1)
    video = sample(load_space(ROOT / "search_spaces" / "tiny_video.yaml"), 0)
    train(video, teacher, None, TrainConfig(proxy=proxy, checkpoint_every=0, ema_decay=0), tmp_path / "t",
          device="cpu")
    cfg = FewStepConfig(method="adversarial", steps=2, train_steps=4, lr=2e-3, evaluate=False,
                        options={"guidance": 2.0, "teacher_steps": 2, "adv_weight": 0.5, "freeze_spatial": True},
                        train={"checkpoint_every": 2, "ema_decay": 0.0})
    step_distill(tmp_path / "t", tmp_path / "a", cfg, teacher=teacher, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        step_distill(tmp_path / "t", tmp_path / "b", cfg, teacher=teacher, device="cpu", callbacks=[crash_at(3)])
    res = step_distill(tmp_path / "t", tmp_path / "b", cfg, teacher=teacher, device="cpu", resume="latest")
    assert res.start_step == 2
    _same_files(tmp_path / "a", tmp_path / "b")
    last = "checkpoints/step-00000004/objective.pt"
    state = torch.load(tmp_path / "a" / last, weights_only=True)
    _same_state(state, torch.load(tmp_path / "b" / last, weights_only=True))
    assert any(".temporal." in k for k in state["heads"])  # temporal self-attention over the frames
    before, after = ArchUNet.from_pretrained(tmp_path / "t"), ArchUNet.from_pretrained(tmp_path / "a")
    moved = frozen = 0
    for spec, b0, b1 in zip(before.block_specs, before.blocks, after.blocks):
        same = all(torch.equal(x, y) for x, y in zip(b0.state_dict().values(), b1.state_dict().values()))
        if is_temporal(spec.type):
            moved += not same
        else:
            frozen += 1
            assert same, spec.name
    assert moved and frozen
    assert res.metrics["trainable_params"] < res.params


def test_parameterisations_one_step_targets_and_folded_guidance():
    """eps / v / flow read as (x0, eps) and back; the one-step target lands where the teacher's
    move did; a model with the guidance folded in draws as the unfolded one given that guidance."""
    from archsearch.distill import GuidanceEmbedding, NoiseProcess
    from archsearch.distill._fewstep import FewStepObjective, fewstep_scheduler
    from archsearch.distill._noise import from_x0_eps, to_x0_eps
    from archsearch.model import build_model

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for pred, proc in (("epsilon", "epsilon"), ("v_prediction", "epsilon"), ("flow", "flow")):
        p = NoiseProcess(proc)
        t = torch.tensor([999, 500, 20]) if proc != "flow" else torch.tensor([990.0, 500.0, 20.0])
        a, b = p.coefficients(t)
        x = p.add_noise(x0, eps, t)
        back = to_x0_eps(from_x0_eps(x0, eps, a, b, pred), x, a, b, pred)
        tol = 1e-2 if pred == "epsilon" else 1e-4  # epsilon's x0 at alpha 5e-5: float32 rounding / 5e-5
        assert torch.allclose(back[0], x0, atol=tol) and torch.allclose(back[1], eps, atol=1e-4), pred
    with pytest.raises(ParameterError, match=r"^method: lcm needs an epsilon or v_prediction teacher"):
        fewstep_scheduler(NoiseProcess("flow"), "lcm", "flow")

    class _Obj(FewStepObjective):  # the shared pieces only
        def __init__(self, process):
            self.process, self.prediction = process, "v_prediction"

    obj = _Obj(NoiseProcess("epsilon"))
    t, t1 = torch.tensor([999, 749, 249]), torch.tensor([749, 499, -1])
    x, x1 = obj.noisy(x0, eps, t), torch.randn(3, 4, 8, 8, generator=g)
    v = obj.one_step_target(x, t, t1, x1)
    x0_s, eps_s = obj.student_x0_eps(v, x, t)
    a1, b1 = obj.process.coefficients(t1)
    landed = a1.view(-1, 1, 1, 1) * x0_s + b1.view(-1, 1, 1, 1) * eps_s
    assert torch.allclose(landed, x1, atol=1e-3)

    model = build_model(sample(load_space(ROOT / "search_spaces" / "tiny.yaml"), 0).for_proxy(resolution=8)).eval()
    emb = GuidanceEmbedding(16, model.blocks[0].proj.num_channels)
    torch.nn.init.normal_(emb.cond_proj.weight)
    xs, ts, ctx = torch.randn(2, 4, 8, 8), torch.tensor([700, 300]), torch.randn(2, model.candidate.context_length,
                                                                                  model.candidate.context_dim)
    handle = emb.attach(model)
    emb.set(torch.tensor([5.0, 5.0]))
    with torch.no_grad():
        want = model(xs, ts, ctx)
        emb.set(torch.tensor([2.0, 2.0]))
        other = model(xs, ts, ctx)
    handle.remove()
    emb.set(None)
    emb.fold(model, 5.0)
    with torch.no_grad():
        assert torch.allclose(model(xs, ts, ctx), want, atol=1e-5)  # folded: plain model at guidance 5
        handle = emb.attach(model)
        emb.set(torch.tensor([2.0, 2.0]))
        assert torch.allclose(model(xs, ts, ctx), other, atol=1e-5)  # the embedding adds the difference
        assert not torch.allclose(other, want)

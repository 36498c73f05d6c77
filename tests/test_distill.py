"""Synthetic data, noise process, distillation losses and the proxy run (built-in teacher)."""

from __future__ import annotations

import math
import pickle
import re

import pytest
import torch
from torch import nn

from archsearch.data import SyntheticImageText, SyntheticVideoText, clear_caches
from archsearch.data._synthetic import COLOURS, POSITIONS
from archsearch.distill import (
    NoiseProcess,
    ProxyConfig,
    TrialFailed,
    distill,
    distill_loss,
    load_teacher,
    pair_taps,
)
from archsearch.errors import ArchsearchError, SpecError
from tests.conftest import TINY_PROXY

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPACE = """\
schema_version: 1
name: tiny-test
kind: image
latent_channels: 4
resolution: 16
context_dim: 32
context_length: 8
norm_groups: 8
defaults: {resnet_variant: plain, head_dim: 16, ffn_type: geglu}
stages:
  - {channels: {choice: [16, 32]}, resnet_blocks: 1, attention: none}
  - {channels: 32, resnet_blocks: 1, attention: cross, transformer_depth: 1, ffn_ratio: 2}
mid: {resnet_blocks: 1, attention: self_cross, transformer_depth: 1}
proxy:
  resolution: 8
  steps: 12
  batch: 4
  holdout: 8
  teacher: {builtin: image, train_steps: 10, width: 32, batch: 4, data_size: 64}
"""


@pytest.fixture(scope="module")
def cache(teacher_cache):
    return teacher_cache


@pytest.fixture(scope="module")
def space():
    from archsearch.spec import load_space_text

    return load_space_text(TINY_SPACE, "tiny-test.yaml")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return tiny_teacher


def _candidates(space, n=2):
    from archsearch.candidate import sample_many

    return sample_many(space, n, seed=0)


# --------------------------------------------------------------------------- data


def test_synthetic_items_are_deterministic_and_seeded():
    a = SyntheticImageText(resolution=16, latent_channels=4, size=32, seed=3)
    b = SyntheticImageText(resolution=16, latent_channels=4, size=32, seed=3)
    c = SyntheticImageText(resolution=16, latent_channels=4, size=32, seed=4)
    assert torch.equal(a.latents(range(32)), b.latents(range(32)))
    assert a.captions() == b.captions()
    assert a.captions() != c.captions()
    holdout = SyntheticImageText(resolution=16, latent_channels=4, size=32, seed=3, split="holdout")
    assert holdout.captions() != a.captions()
    item = a[5]
    assert item["latent"].shape == (4, 16, 16) and item["caption"] == a.caption(5)
    assert SyntheticImageText(8, 6, size=4).latent(0).shape == (6, 8, 8)
    with pytest.raises(IndexError):
        a.latent(32)


def test_image_caption_matches_the_picture():
    """One-shape items: the caption's colour and position are what is drawn."""
    data = SyntheticImageText(resolution=32, latent_channels=4, size=120, seed=0, max_objects=1)
    checked = 0
    for i in range(len(data)):
        words = re.match(r"a (\w+) (\w+) (\w+) (.+)$", data.caption(i))
        assert words, data.caption(i)
        size, colour, shape, where = words.groups()
        lat = data.latent(i)
        mask = (lat[3] + 1) / 2  # channel 3 = coverage in [-1, 1]
        assert mask.sum() > 0.5
        rgb = ((lat[:3] + 1) / 2).sum((1, 2)) / mask.sum()  # black background: rgb = colour * coverage
        assert torch.allclose(rgb, torch.tensor(COLOURS[colour]), atol=1e-3), (data.caption(i), rgb)
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        cx, cy = ((xs + 0.5) * mask).sum() / mask.sum() / 32, ((ys + 0.5) * mask).sum() / mask.sum() / 32
        name = {v: k for k, v in {
            "top left": "at the top left", "top": "at the top", "top right": "at the top right",
            "left": "on the left", "center": "in the center", "right": "on the right",
            "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
        }.items()}[where]
        ex, ey = POSITIONS[name]
        tol = 0.09 if shape != "triangle" else 0.12  # a triangle's centroid sits below its centre
        assert abs(cx - ex) < tol and abs(cy - ey) < tol, (data.caption(i), float(cx), float(cy))
        checked += 1
    assert checked == 120


def test_video_shapes_move_as_the_caption_says():
    data = SyntheticVideoText(resolution=16, latent_channels=4, frames=4, size=40, seed=1)
    for i in range(len(data)):
        lat = data.latent(i)
        assert lat.shape == (4, 4, 16, 16)
        mask = (lat[3] + 1) / 2  # (T, H, W)
        xs = torch.arange(16.0)
        cx = [(mask[t].sum(0) * xs).sum() / mask[t].sum() for t in (0, 3)]
        cy = [(mask[t].sum(1) * xs).sum() / mask[t].sum() for t in (0, 3)]
        direction = re.search(r"moving (\w+)", data.caption(i)).group(1)
        moved = {"right": cx[1] - cx[0], "left": cx[0] - cx[1], "down": cy[1] - cy[0], "up": cy[0] - cy[1]}
        assert moved[direction] > 3.0, (data.caption(i), moved)


# --------------------------------------------------------------------------- config


def test_proxy_config_defaults_and_errors(space):
    p = ProxyConfig.from_space(space)
    assert (p.resolution, p.steps, p.batch, p.holdout) == (8, 12, 4, 8)
    assert p.teacher == {"builtin": "image", "train_steps": 10, "width": 32, "batch": 4, "data_size": 64}
    assert ProxyConfig.from_dict({}).teacher == {"builtin": "image"}
    assert ProxyConfig.from_dict(None, kind="video").teacher == {"builtin": "video"}

    bad = [
        ({"steps": 0}, "proxy.steps", "an integer >= 1"),
        ({"width_mult": -1}, "proxy.width_mult", "(0, 4]"),
        ({"prediction": "x0"}, "proxy.prediction", "epsilon, v_prediction, flow"),
        ({"stepz": 3}, "proxy.stepz: unknown key", "steps"),
        ({"teacher": {"builtin": "video"}}, "proxy.teacher.builtin", "image"),
        ({"teacher": {"diffusers": "/x", "width": 3}}, "proxy.teacher.width: unknown key", "subfolder"),
        ({"teacher": {"train_steps": 2.5}}, "proxy.teacher.train_steps", "an integer >= 1"),
        ({"teacher": 7}, "proxy.teacher", "diffusers"),
    ]
    for d, key, allowed in bad:
        with pytest.raises(SpecError) as exc:
            ProxyConfig.from_dict(d, source="spec.yaml")
        msg = str(exc.value)
        assert msg.startswith("spec.yaml: ") and key in msg and allowed in msg and "\n" not in msg, msg


def test_proxy_errors_name_the_spec_line():
    from archsearch.spec import load_space_text

    text = TINY_SPACE.replace("  resolution: 8\n", "  resolution: 7\n")
    sp = load_space_text(text, "mine.yaml")
    with pytest.raises(SpecError) as exc:
        ProxyConfig.from_space(sp)
    line = text.splitlines().index("  resolution: 7") + 1
    assert str(exc.value).startswith(f"mine.yaml:{line}: proxy.resolution"), str(exc.value)
    assert "multiple of 2" in str(exc.value)


def test_overrides_are_validated_and_errors_name_the_parameter(space):
    from archsearch.data import resolve_device

    p = ProxyConfig.from_space(space, steps=5, batch=None, width_mult=1.0)
    assert (p.steps, p.batch, p.width_mult, p.resolution) == (5, 4, 1.0, 8)  # None keeps the spec's
    with pytest.raises(ArchsearchError) as exc:
        ProxyConfig.from_space(space, steps=0)
    assert str(exc.value) == "proxy.steps: bad value 0 (allowed: an integer >= 1)"  # no file: not from it
    with pytest.raises(ArchsearchError, match=r"^proxy\.resolution: bad value 7 \(allowed: a multiple of 2 "):
        ProxyConfig.from_space(space, resolution=7)  # the space has 2 stages
    with pytest.raises(ArchsearchError, match=r"^device: bad value 'tpu' \(allowed: auto, cpu, cuda, cuda:N, mps\)$"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"


# --------------------------------------------------------------------------- noise / losses


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow"])
def test_noise_process_targets_recover_the_clean_sample(prediction):
    proc = NoiseProcess(prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 8, 8, generator=g)
    noise = torch.randn(6, 4, 8, 8, generator=g)
    t = proc.sample_timesteps(6, g)
    xt = proc.add_noise(x0, noise, t)
    y = proc.target(x0, noise, t)
    if prediction == "epsilon":
        assert torch.equal(y, noise)
        a = proc._alphas[t].view(-1, 1, 1, 1)
        assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    elif prediction == "v_prediction":
        a = proc._alphas[t].view(-1, 1, 1, 1)
        assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * y, x0, atol=1e-5)  # x0 = sqrt(a) x_t - sqrt(1-a) v
    else:
        s = (t / 1000).view(-1, 1, 1, 1)
        assert torch.allclose(xt - s * y, x0, atol=1e-5)  # x0 = x_t - s * (noise - x0)
        assert ((t > 0) & (t <= 1000)).all()
    ev = proc.even_timesteps(10)
    assert len(ev) == 10 and (ev[1:] > ev[:-1]).all()


def test_pair_taps_matches_resolution_in_order():
    student = {"down.0": (2, 16, 8, 8), "down.1": (2, 32, 4, 4), "mid": (2, 32, 4, 4),
               "up.0": (2, 32, 4, 4), "up.1": (2, 16, 8, 8)}
    # a diffusers-like teacher: down blocks end with their downsampler, up blocks with an upsampler
    teacher = {"down.0": (2, 64, 4, 4), "down.1": (2, 128, 2, 2), "down.2": (2, 128, 2, 2),
               "mid": (2, 128, 2, 2), "up.0": (2, 128, 4, 4), "up.1": (2, 64, 8, 8), "up.2": (2, 64, 8, 8)}
    # student down.0 (8x8) has no 8x8 teacher down tap; mid sizes differ; at 8x8 in the up path
    # the student's last tap pairs with the teacher's last (deepest) one
    assert pair_taps(student, teacher) == [("down.1", "down.0"), ("up.0", "up.0"), ("up.1", "up.2")]
    assert pair_taps(student, student) == [(k, k) for k in student]
    two = {"down.0": (2, 8, 4, 4), "down.1": (2, 8, 4, 4), "down.2": (2, 8, 2, 2)}
    three = {"down.0": (2, 8, 4, 4), "down.1": (2, 8, 4, 4), "down.2": (2, 8, 4, 4), "down.3": (2, 8, 2, 2)}
    assert pair_taps(two, three) == [("down.0", "down.1"), ("down.1", "down.2"), ("down.2", "down.3")]


def test_kd_terms_are_rescaled_to_the_task_loss_per_sample():
    torch.manual_seed(0)
    s_pred = torch.randn(3, 4, 8, 8, requires_grad=True)
    target, t_pred = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8) * 5  # a far-off teacher
    s_feat = {"down.0": torch.randn(3, 8, 8, 8, requires_grad=True)}
    t_feat = {"down.0": torch.randn(3, 16, 8, 8) * 10}
    proj = nn.ModuleDict({"down_0": nn.Conv2d(8, 16, 1)})
    loss, parts = distill_loss(s_pred, target, t_pred, s_feat, t_feat, [("down.0", "down.0")], proj, 0.5, 0.25)
    task = ((s_pred - target) ** 2).flatten(1).mean(1)
    # each KD term carries the task loss's value: loss = mean(task * (1 + 0.5 + 0.25))
    assert torch.allclose(loss, (task * 1.75).mean(), rtol=1e-5)
    assert parts["kd_output"] > 10 * parts["task"]  # the raw KD term is much larger...
    loss.backward()  # ...and gradients reach the student and the projection
    assert s_feat["down.0"].grad.abs().sum() > 0 and proj["down_0"].weight.grad.abs().sum() > 0
    only_task, _ = distill_loss(s_pred, target, t_pred, s_feat, t_feat, [("down.0", "down.0")], proj, 0, 0)
    assert torch.allclose(only_task, task.mean())


# --------------------------------------------------------------------------- proxy runs


def test_quality_is_deterministic_and_tracks_training(space, teacher):
    cand = _candidates(space, 1)[0]
    proxy = ProxyConfig.from_space(space)
    clear_caches()
    r1 = distill(cand, teacher, proxy, device="cpu", threads=1)
    clear_caches()  # recompute everything (teacher outputs, held-out batch) from scratch
    r2 = distill(cand, teacher, proxy, device="cpu", threads=1)
    assert r1.quality == r2.quality and r1.loss_curve == r2.loss_curve  # exact, not approximate
    r3 = distill(cand, teacher, proxy, device="cpu", threads=1)  # teacher outputs from the cache
    assert r3.quality == r1.quality and r3.loss_curve == r1.loss_curve
    assert len(r1.loss_curve) == 12 and r1.steps == 12 and math.isfinite(r1.quality)
    assert r1.device == "cpu" and r1.params > 0 and r1.wall_time_s > 0
    assert r1.metrics["feature_pairs"], "stage outputs should pair up with the teacher's"
    other_seed = distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "seed": 1}), threads=1)
    assert other_seed.quality != r1.quality
    untrained = distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "steps": 1}), threads=1)
    longer = distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "steps": 40}), threads=1)
    assert longer.quality < untrained.quality


def test_progress_is_a_callback(space, teacher):
    calls = []
    distill(_candidates(space, 1)[0], teacher, ProxyConfig.from_dict({**TINY_PROXY, "steps": 3}),
            lambda *a: calls.append(a))
    steps = [(done, total) for phase, _, done, total in calls if phase == "distill"]
    assert steps == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert all(isinstance(desc, str) and "loss" in desc for _, desc, _, _ in calls)


def test_student_params_are_at_proxy_scale(space, teacher):
    from archsearch.model import build_model

    cand = _candidates(space, 1)[0]
    half = distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "steps": 1, "width_mult": 0.5}))
    full = distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "steps": 1, "width_mult": 1.0}))
    small = cand.for_proxy(width_mult=0.5, resolution=8, context_dim=teacher.context_dim,
                           context_length=teacher.context_length, latent_channels=teacher.latent_channels)
    assert half.params == sum(p.numel() for p in build_model(small).parameters())
    assert half.params < full.params


def test_nan_loss_fails_the_trial(space, teacher):
    cand = _candidates(space, 1)[0]
    proxy = ProxyConfig.from_dict({**TINY_PROXY, "lr": 1e6, "steps": 5})
    with pytest.raises(TrialFailed) as exc:
        distill(cand, teacher, proxy)
    assert "loss is" in exc.value.reason or "score is" in exc.value.reason


def test_prediction_must_match_the_teacher(space, teacher):
    cand = _candidates(space, 1)[0]
    with pytest.raises(ArchsearchError, match=r"proxy\.prediction: 'flow' does not match the teacher's \(allowed: epsilon\)"):
        distill(cand, teacher, ProxyConfig.from_dict({**TINY_PROXY, "prediction": "flow"}))


def test_builtin_teacher_is_cached_and_keyed(cache, teacher, monkeypatch, tmp_path):
    import shutil

    import archsearch.distill._teacher as tmod

    folder = cache / "teachers" / teacher.fingerprint
    assert (folder / "model.safetensors").is_file() and (folder / "teacher.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temp left

    def boom(*a, **k):
        raise AssertionError("a cached teacher must not be retrained")

    monkeypatch.setattr(tmod, "_train_builtin", boom)
    again = load_teacher(ProxyConfig.from_dict(TINY_PROXY), kind="image", cache_dir=cache)
    assert again.fingerprint == teacher.fingerprint
    for a, b in zip(again.module.state_dict().values(), teacher.module.state_dict().values()):
        assert torch.equal(a, b)
    clone = pickle.loads(pickle.dumps(again))  # workers receive the teacher pickled
    assert clone.fingerprint == teacher.fingerprint
    # another setting is another teacher: it would be trained (and is not found in the cache)
    other = ProxyConfig.from_dict({**TINY_PROXY, "teacher": {**TINY_PROXY["teacher"], "train_steps": 31}})
    with pytest.raises(AssertionError, match="must not be retrained"):
        load_teacher(other, kind="image", cache_dir=cache)
    # the cache entry is an ordinary ArchUNet folder
    from archsearch.model import ArchUNet

    assert ArchUNet.from_pretrained(folder).candidate.id == teacher.info["candidate"]
    # a damaged entry is trained again rather than crashing or loading garbage (damaged in a
    # copy of the cache: the session's teacher stays cached for the other tests)
    damaged = tmp_path / "cache"
    shutil.copytree(folder, damaged / "teachers" / folder.name)
    (damaged / "teachers" / folder.name / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AssertionError, match="must not be retrained"):
        load_teacher(ProxyConfig.from_dict(TINY_PROXY), kind="image", cache_dir=damaged)


@pytest.mark.slow
def test_video_proxy_run_with_builtin_video_teacher(cache):
    from archsearch.candidate import sample
    from archsearch.spec import load_space_text

    text = (TINY_SPACE.replace("kind: image", "kind: video\nframes: 4")
            .replace("attention: none}", "attention: none, temporal: {type: conv1d, count: 1}}")
            .replace("builtin: image", "builtin: video")
            .replace("  holdout: 8\n", "  holdout: 4\n  frames: 2\n  steps: 3\n"))
    text = text.replace("  steps: 12\n", "")
    sp = load_space_text(text, "video.yaml")
    proxy = ProxyConfig.from_space(sp)
    proxy.teacher["train_steps"] = 10
    teacher = load_teacher(proxy, kind="video", cache_dir=cache)
    assert teacher.kind == "video"
    cand = sample(sp, 0)
    r1 = distill(cand, teacher, proxy)
    r2 = distill(cand, teacher, proxy)
    assert math.isfinite(r1.quality) and r1.quality == r2.quality
    assert len(r1.loss_curve) == 3


def test_flow_teacher_and_proxy(space, cache):
    """``prediction: flow`` trains a rectified-flow teacher and distils against it."""
    d = {**TINY_PROXY, "prediction": "flow", "steps": 3, "teacher": {**TINY_PROXY["teacher"], "train_steps": 10}}
    proxy = ProxyConfig.from_dict(d)
    teacher = load_teacher(proxy, kind="image", cache_dir=cache)
    assert teacher.prediction == "flow"
    eps = load_teacher(ProxyConfig.from_dict({**d, "prediction": "epsilon"}), cache_dir=cache)
    assert eps.fingerprint != teacher.fingerprint  # the process is part of the teacher's identity
    result = distill(_candidates(space, 1)[0], teacher, proxy)
    assert math.isfinite(result.quality) and len(result.loss_curve) == 3

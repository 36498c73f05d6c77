"""SnapGen-V's temporal search (``search: {method: temporal}``, :mod:`archsearch.search._temporal`):
the spatial layers of every trial's student are a trained image backbone's, bit for bit and
frozen, while its temporal layers train; a space whose spatial layers are not the backbone's is
refused in one line; a candidate over ``max_memory_mb`` is rejected before any training."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import archsearch.distill as stage
from archsearch.candidate import sample
from archsearch.distill import ProxyConfig, TrainConfig, load_teacher, spatial_candidate, train
from archsearch.errors import ArchsearchError
from archsearch.model import ArchUNet, build_model
from archsearch.search import SearchSettings, TrialSeededSampler, evaluate
from archsearch.search._local import Budget, worker_loop
from archsearch.search._temporal import (
    FrozenSpatial,
    TemporalContext,
    check_temporal,
    load_backbone,
    prepare_temporal,
)
from archsearch.spec import load_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_PROXY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent

#: the video proxy of the tests: the backbone's own width (1.0), 8x8 latents, 2 frames, 3 steps
VIDEO_PROXY = {"width_mult": 1.0, "resolution": 8, "frames": 2, "steps": 3, "batch": 1, "holdout": 2, "lr": 1e-2,
               "teacher": {"builtin": "video", "train_steps": 3, "width": 32, "data_size": 8}}


def _space(tmp_path: Path, name: str = "tv", *, channels=32, constraints=None, search=None, proxy=None) -> Path:
    """tiny_video.yaml with its spatial choices fixed (first width, second stage's attention): its
    temporal layers searchable, and the video proxy."""
    data = yaml.safe_load((ROOT / "search_spaces" / "tiny_video.yaml").read_text())
    data["name"] = name
    data["stages"][0]["channels"] = channels
    data["stages"][1]["attention"] = "self_cross"
    data["proxy"] = {**VIDEO_PROXY, **(proxy or {})}
    data["search"] = {"objectives": ["quality", "params"], "n_trials": 3, "sampler": "random", **(search or {})}
    data["constraints"] = dict(constraints or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def video_teacher(teacher_cache):
    return load_teacher(ProxyConfig.from_dict(VIDEO_PROXY, kind="video"), "video", cache_dir=teacher_cache, threads=1)


@pytest.fixture(scope="module")
def image_backbone(tmp_path_factory, teacher_cache, video_teacher):
    """A real `archsearch train` output: the spatial part of the test space's students, trained
    for 3 steps against the tiny built-in image teacher."""
    tmp = tmp_path_factory.mktemp("backbone")
    space = load_space(_space(tmp))
    small = sample(space, 0).for_proxy(width_mult=1.0, resolution=8, frames=2, context_dim=video_teacher.context_dim,
                                       context_length=video_teacher.context_length,
                                       latent_channels=video_teacher.latent_channels)
    image = spatial_candidate(small)
    proxy = ProxyConfig.from_dict({**TINY_PROXY, "width_mult": 1.0, "steps": 3, "batch": 2, "holdout": 2})
    teacher = load_teacher(proxy, "image", cache_dir=teacher_cache, threads=1)
    train(image, teacher, None, TrainConfig(proxy=proxy, ema_decay=0, checkpoint_every=0), tmp / "image",
          device="cpu")
    return tmp / "image"


def _spy(monkeypatch, ctx=None):
    """Wrap ``archsearch.distill.distill`` (``evaluate`` looks it up at call time): keep each
    trained student, and check that ``evaluate`` passes the context's ``prepare_student`` hook."""
    real = stage.distill
    students: list = []

    def spy(candidate, teacher, config, progress=None, **kw):
        if ctx is not None:
            assert kw["prepare_student"] is ctx.prepare_student
        kw["keep_student"] = True
        result = real(candidate, teacher, config, progress, **kw)
        students.append(result.student)
        return result

    monkeypatch.setattr(stage, "distill", spy)
    return students


def _units(model) -> dict[str, dict[str, torch.Tensor]]:
    return {s.name: block.state_dict() for s, block in zip(model.block_specs, model.blocks)}


def test_a_short_temporal_search_leaves_the_spatial_weights_bit_identical(tmp_path, monkeypatch, video_teacher,
                                                                          image_backbone):
    space = load_space(_space(tmp_path))
    settings = SearchSettings.from_space(space)
    proxy = ProxyConfig.from_space(space)
    ctx = prepare_temporal(space, settings, proxy, video_teacher, None, backbone=str(image_backbone), device="cpu",
                           threads=1)
    assert isinstance(ctx, TemporalContext) and isinstance(ctx.prepare_student, FrozenSpatial)
    students = _spy(monkeypatch, ctx)
    study = optuna.create_study(directions=settings.directions, sampler=TrialSeededSampler(settings))
    worker_loop(study, ctx, Budget(settings.n_trials))  # ask -> resolve -> claim -> evaluate -> tell
    states = [t.user_attrs["state"] for t in study.trials]
    assert len(states) == 3 and "failed" not in states, [t.user_attrs.get("fail_reason") for t in study.trials]
    assert students, "no trial trained"

    backbone = _units(ArchUNet.from_pretrained(image_backbone))
    for student in students:
        torch.manual_seed(proxy.seed)  # distill's initialisation of the same student
        fresh = _units(build_model(student.candidate))
        temporal_changed = False
        for spec, block in zip(student.block_specs, student.blocks):
            tensors = block.state_dict()
            if spec.type.startswith("temporal"):
                temporal_changed |= any(not torch.equal(v, fresh[spec.name][k]) for k, v in tensors.items())
                assert all(p.requires_grad for p in block.parameters())
                continue
            assert set(tensors) == set(backbone[spec.name]), spec.name
            for k, v in tensors.items():
                assert torch.equal(v, backbone[spec.name][k]), (student.candidate.id, spec.name, k)
            assert not any(p.requires_grad for p in block.parameters()), spec.name
        assert temporal_changed, f"{student.candidate.id}: no temporal weight moved"
    # the backbone itself was not touched by the trials either
    again = _units(ctx.backbone.model())
    assert all(torch.equal(v, backbone[u][k]) for u, t in again.items() for k, v in t.items())


def test_a_space_whose_spatial_layers_differ_is_refused_in_one_line(tmp_path, image_backbone):
    wide = load_space(_space(tmp_path, "wide", channels=16))
    with pytest.raises(ArchsearchError) as exc:
        check_temporal(wide, ProxyConfig.from_space(wide), str(image_backbone))
    msg = str(exc.value)
    assert "\n" not in msg and "differ from the backbone" in msg
    assert "down.0.layer0.resnet: " in msg and "out_channels 16 (backbone 32)" in msg, msg

    narrow = load_space(_space(tmp_path, "narrow", proxy={"width_mult": 0.5}))
    with pytest.raises(ArchsearchError, match=r"proxy\.width_mult 0\.5") as exc:
        check_temporal(narrow, ProxyConfig.from_space(narrow), str(image_backbone))
    assert "\n" not in str(exc.value)

    searchable = load_space(ROOT / "search_spaces" / "tiny_video.yaml")  # its first width is a choice
    with pytest.raises(ArchsearchError, match=r"tiny_video\.yaml:\d+: stages\[0\]\.channels: down0\.channels is "
                                               r"searchable") as exc:
        check_temporal(searchable, ProxyConfig.from_space(searchable), str(image_backbone))
    assert "\n" not in str(exc.value)

    supernet = load_space(_space(tmp_path, "supernet", proxy={"kind": "supernet"}))
    with pytest.raises(ArchsearchError, match=r"proxy\.kind: the temporal search trains every candidate") as exc:
        check_temporal(supernet, ProxyConfig.from_space(supernet), str(image_backbone))
    assert "\n" not in str(exc.value)

    missing = load_space(_space(tmp_path, "missing"))
    with pytest.raises(ArchsearchError, match="not a trained model folder") as exc:
        check_temporal(missing, ProxyConfig.from_space(missing), str(tmp_path / "nowhere"))
    assert "\n" not in str(exc.value)


def test_a_candidate_over_max_memory_mb_is_rejected_before_training(tmp_path, monkeypatch, video_teacher,
                                                                    image_backbone):
    space = load_space(_space(tmp_path, "mem", constraints={"max_memory_mb": 0.5}))
    settings = SearchSettings.from_space(space)
    ctx = prepare_temporal(space, settings, ProxyConfig.from_space(space), video_teacher, None,
                           backbone=str(image_backbone), device="cpu", threads=1)
    students = _spy(monkeypatch, ctx)
    calls = []
    ctx.prepare_student = lambda student: calls.append(student)  # would load the backbone: must not run
    rec = evaluate(sample(space, 0), ctx)
    assert rec.state == "infeasible" and rec.memory_mb > 0.5, rec
    assert "max_memory_mb" in rec.fail_reason and rec.memory_source
    assert rec.constraints["max_memory_mb"] > 0
    assert not students and not calls and rec.quality is None


def test_the_demo_space_fits_the_builtin_image_model(tmp_path, teacher_cache):
    space = load_space(ROOT / "search_spaces" / "video_temporal.yaml")
    proxy = ProxyConfig.from_space(space)
    bb = check_temporal(space, proxy)  # backbone: builtin, nothing trained
    assert bb.path is None and "built-in image model" in bb.source
    types = {d.name: set(d.options) for d in space.dimensions()}
    for stage_ in ("down0", "down1", "mid"):
        assert {"conv1d", "attn1d", "attn3d", "none"} <= types[f"{stage_}.temporal.type"]
    # the built-in image model, trained (tiny settings), is that backbone
    tiny = {**{k: v for k, v in proxy.teacher.items() if k != "builtin"}, "train_steps": 2, "data_size": 8}
    small = ProxyConfig.from_dict({"width_mult": 1.0, "resolution": 8, "frames": 2, "teacher": tiny}, kind="video")
    loaded = load_backbone(space, small, cache_dir=teacher_cache, threads=1)
    assert loaded.path is not None and (loaded.path / "model.safetensors").is_file() and loaded.fingerprint
    assert loaded.model().candidate.kind == "image"

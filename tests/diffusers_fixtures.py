"""Tiny diffusers checkpoints and tiny data sets on disk, built from nothing (no downloads).

Plain functions, so tests and benchmarks can call them; ``tests/test_data_prepare.py`` wraps
them in session-scoped pytest fixtures.

* :func:`write_clip_tokenizer` -- a CLIP BPE tokenizer with a vocabulary written here
  (letters, a few merges, the two special tokens).
* :func:`build_sd_checkpoint` -- ``StableDiffusionPipeline(...).save_pretrained``: a
  ``UNet2DConditionModel``, an ``AutoencoderKL`` with block_out_channels (8, 16) (a /2 VAE), a
  ``CLIPTextModel``, the tokenizer and a ``DDIMScheduler``.
* :func:`build_sdxl_checkpoint` -- the same with SDXL's two text encoders
  (``CLIPTextModel`` + ``CLIPTextModelWithProjection``) and a ``text_time`` UNet.
* :func:`build_datasets` -- the same generated pictures and captions as an image folder with
  ``metadata.jsonl``, with sidecar ``.txt`` files, as WebDataset tars, a saved ``datasets``
  dataset and a Parquet file; short mp4 clips; a prompts file; and a folder of bad files.
"""

from __future__ import annotations

import io
import json
import string
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

#: the captions of the generated pictures (only letters the tiny vocabulary knows)
CAPTIONS = [
    "a red circle", "a blue square", "a green cat", "a small red dog", "the big blue sky",
    "a yellow sun at noon", "two green trees", "a black box", "a white cloud", "a pink flower",
    "an orange fish", "a grey stone",
]


def write_clip_tokenizer(path: Path, max_length: int = 16, pad_token: str | None = None) -> Path:
    """A working ``CLIPTokenizer`` with a tiny vocabulary, saved to ``path``."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in string.ascii_lowercase + "!":
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase + "!":
        vocab[c + "</w>"] = len(vocab)
    merges = ["r e", "re d</w>", "b l", "bl u", "blu e</w>", "a n", "t h", "th e</w>"]
    for m in merges:
        a, b = m.split()
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    kw = {"pad_token": pad_token} if pad_token else {}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=max_length, **kw)
    tok.save_pretrained(str(path))
    return path


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32,
        scaling_factor=0.5, shift_factor=0.1,
    )


def _clip(cls_name: str = "CLIPTextModel", hidden: int = 32, projection: int | None = None, vocab: int = 64):
    import transformers

    cfg = transformers.CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                      projection_dim=projection or hidden, eos_token_id=vocab - 1,
                                      bos_token_id=vocab - 2, pad_token_id=vocab - 1)
    return getattr(transformers, cls_name)(cfg)


def build_sd_checkpoint(root: Path, seed: int = 0) -> Path:
    """A tiny SD-1.5-style checkpoint folder (latent 16 x 16 at 32 px through the /2 VAE)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer

    root = Path(root)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(write_clip_tokenizer(root / "_tok")), local_files_only=True)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip(vocab=len(tok)), tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root))
    _rmtree(root / "_tok")
    return root


def build_sdxl_checkpoint(root: Path, seed: int = 0) -> Path:
    """A tiny SDXL-style checkpoint: two text encoders (32 + 32 wide, pooled 16), text_time UNet."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer

    root = Path(root)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(write_clip_tokenizer(root / "_tok")), local_files_only=True)
    tok2 = AutoTokenizer.from_pretrained(str(write_clip_tokenizer(root / "_tok2", pad_token="!")), local_files_only=True)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip(vocab=len(tok)), text_encoder_2=_clip("CLIPTextModelWithProjection", 32, 16, len(tok2)),
        tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(str(root))
    _rmtree(root / "_tok")
    _rmtree(root / "_tok2")
    return root


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- data


def make_picture(i: int, size: tuple[int, int] = (40, 48)) -> Any:
    """Picture ``i``: a deterministic gradient with a coloured block, ``size`` = (h, w)."""
    from PIL import Image

    h, w = size
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 5 + i * 20) % 256, (y * 5 + i * 40) % 256, np.full_like(x, (i * 70) % 256)], -1)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    a[top : top + h // 3, left : left + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_clip(path: Path, i: int, frames: int = 8, fps: int = 8, size: int = 32) -> Path:
    """A short mp4 clip (h264) whose frames are pictures ``i, i+1, ...`` at ``size`` px."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for k in range(frames):
            frame = av.VideoFrame.from_image(make_picture(i + k, (size, size)))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def build_datasets(root: Path, n: int = 8, size: tuple[int, int] = (40, 48)) -> dict[str, Any]:
    """The same ``n`` pictures and captions in every source format, plus clips, prompts and bad files.

    Returns ``{"pictures": [PIL], "captions": [str], "names": [file names], <format>: path, ...}``.
    """
    import datasets

    root = Path(root)
    pics = [make_picture(i, size) for i in range(n)]
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    names = [f"img_{i:03d}.png" for i in range(n)]
    out: dict[str, Any] = {"pictures": pics, "captions": caps, "names": names}

    d = root / "folder_jsonl"
    (d / "sub").mkdir(parents=True)
    rows = []
    for i, (p, c, name) in enumerate(zip(pics, caps, names)):
        rel = f"sub/{name}" if i % 2 else name  # nested folders: file_name is relative to metadata.jsonl
        p.save(d / rel)
        rows.append(json.dumps({"file_name": rel, "text": c}))
    (d / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    out["imagefolder"] = d

    d = root / "folder_txt"
    d.mkdir()
    for p, c, name in zip(pics, caps, names):
        p.save(d / name)
        (d / name).with_suffix(".txt").write_text(c + "\n")
    out["sidecar"] = d

    d = root / "wds"
    d.mkdir()
    half = (n + 1) // 2
    for s, chunk in enumerate((range(0, half), range(half, n))):
        with tarfile.open(d / f"data-{s:05d}.tar", "w") as tf:
            for i in chunk:
                key = f"{i:06d}"
                members = [(f"{key}.png", _png(pics[i]))]
                if i % 3 == 0:
                    members.append((f"{key}.json", json.dumps({"caption": caps[i], "w": size[1]}).encode()))
                else:
                    members.append((f"{key}.txt", caps[i].encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    out["webdataset"] = str(d / "data-{00000..00001}.tar")

    ds = datasets.Dataset.from_dict({"key": names, "image": pics, "text": caps},
                                    features=datasets.Features({"key": datasets.Value("string"),
                                                                "image": datasets.Image(),
                                                                "text": datasets.Value("string")}))
    ds.save_to_disk(str(root / "hfds"))
    out["datasets"] = root / "hfds"
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "part-0.parquet"))
    out["parquet"] = root / "parquet"

    d = root / "videos"
    d.mkdir()
    clips = []
    for i in range(3):
        path = write_clip(d / f"clip_{i}.mp4", 10 * i)
        path.with_suffix(".txt").write_text(caps[i])
        clips.append(path)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # not a playable file
    (d / "broken.txt").write_text("a broken clip")
    out["video"] = d
    out["clips"] = clips

    (root / "prompts.txt").write_text("\n".join(caps[:6]) + "\n\n")
    out["prompts"] = root / "prompts.txt"

    d = root / "bad"
    d.mkdir()
    for i in range(3):
        pics[i].save(d / names[i])
    jpg = io.BytesIO()
    pics[3].save(jpg, format="JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(d / "float.tif")
    pics[4].save(d / "numbercap.png")
    pics[5].save(d / "nocaption.png")
    meta = [{"file_name": names[i], "text": caps[i]} for i in range(3)]
    meta += [{"file_name": "truncated.jpg", "text": "a cut jpeg"}, {"file_name": "empty.png", "text": "nothing"},
             {"file_name": "float.tif", "text": "a float picture"}, {"file_name": "numbercap.png", "text": 42}]
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    out["bad"] = d
    return out


def build_cache(checkpoint: Path, source: Path, out: Path, holdout: float = 0.3) -> Path:
    """A latent cache of ``source`` encoded by ``checkpoint`` (fast settings: no workers, float32)."""
    from archsearch.data import prepare

    prepare(source, checkpoint, out, workers=0, batch=4, shard_size=8, dtype="float32", device="cpu", holdout=holdout)
    return Path(out)


def build_pictures(root: Path, n: int = 16, size: tuple[int, int] = (32, 32)) -> Path:
    """``n`` pictures with sidecar captions in one folder (a bigger set than build_datasets')."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_picture(i, size).save(root / f"p{i:03d}.png")
        (root / f"p{i:03d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
    return root

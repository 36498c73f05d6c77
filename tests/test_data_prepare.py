"""``archsearch data prepare``: readers of every format, the encodings, resume, bad files, the cache reader.

Everything runs on tiny checkpoints and data built here (tests/diffusers_fixtures.py); nothing downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from archsearch.data import LatentCache, is_holdout, prepare, resize_crop, teacher_hash, to_tensor
from archsearch.errors import ArchsearchError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_fixtures as F  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
FAST = {"workers": 0, "batch": 2, "shard_size": 4, "dtype": "float32", "device": "cpu"}


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return F.build_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sd_parts(sd_checkpoint):
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    vae = AutoencoderKL.from_pretrained(str(sd_checkpoint / "vae")).eval()
    tok = AutoTokenizer.from_pretrained(str(sd_checkpoint / "tokenizer"))
    te = CLIPTextModel.from_pretrained(str(sd_checkpoint / "text_encoder")).eval()
    return vae, tok, te


@pytest.fixture(scope="session")
def sd_cache(sd_checkpoint, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "sd"
    prepare(data["imagefolder"], sd_checkpoint, out, **FAST)
    return out


def _by_key(cache_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    cache = LatentCache.open(cache_dir)
    split = cache.split("all")
    return {k: {f: v[0] for f, v in split.batch([i]).items() if f != "index"} for i, k in enumerate(split.keys)}


def _reference_crop(img, size=32):
    import random

    crop, _ = resize_crop(img, (size, size), "center", random.Random(0))
    return to_tensor(crop)[None]


def test_latents_and_text_states_equal_the_teachers_own_encoders(sd_cache, sd_parts, data):
    vae, tok, te = sd_parts
    rows = _by_key(sd_cache)
    cache = LatentCache.open(sd_cache)
    assert cache.index.latent_shape == (4, 16, 16) and cache.index.resolution == (32, 32)
    assert (cache.index.context_length, cache.index.context_dim, cache.index.pooled_dim) == (16, 32, 0)
    assert len(rows) == len(data["pictures"])
    for i, (pic, cap) in enumerate(zip(data["pictures"], data["captions"])):
        key = f"sub/{data['names'][i]}" if i % 2 else data["names"][i]
        with torch.no_grad():
            z = (vae.encode(_reference_crop(pic)).latent_dist.mode() - 0.1) * 0.5  # shift, then scaling
            ids = tok([cap], padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
            states = te(ids).last_hidden_state
        torch.testing.assert_close(rows[key]["latents"], z[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rows[key]["text_states"], states[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["sidecar", "webdataset", "datasets", "parquet"])
def test_every_source_format_gives_the_same_encodings(fmt, sd_checkpoint, sd_cache, data, tmp_path):
    res = prepare(data[fmt], sd_checkpoint, tmp_path / "c", **FAST)
    assert res.n_samples == len(data["pictures"]) and res.n_skipped == 0
    ref = {Path(k).name: v for k, v in _by_key(sd_cache).items()}
    got = _by_key(tmp_path / "c")
    names = data["names"]
    for k, v in got.items():
        name = Path(k).name if fmt != "webdataset" else names[int(k.split("/")[-1])]
        assert torch.allclose(v["latents"], ref[name]["latents"], atol=1e-5), (fmt, k)
        assert torch.allclose(v["text_states"], ref[name]["text_states"], atol=1e-5), (fmt, k)


def test_a_registered_format_and_a_source_object_give_the_same_encodings(sd_checkpoint, sd_cache, data, tmp_path):
    """``prepare`` takes a format registered by name, or a :class:`Source` itself."""
    from PIL import Image

    from archsearch.data import SOURCES, Item, Loaded, Source, register_source

    @register_source("test-pictures")
    class Pictures(Source):
        def items(self):
            return [Item(p.name, p.name) for p in sorted(self.path.glob("*.png"))]

        def load(self, item):
            path = self.path / item.ref
            return Loaded(item.key, path.with_suffix(".txt").read_text().strip(), Image.open(path).convert("RGB"))

    try:
        assert Pictures.format == "test-pictures" and SOURCES["test-pictures"] is Pictures
        ref = {Path(k).name: v for k, v in _by_key(sd_cache).items()}
        by_name = prepare(data["sidecar"], sd_checkpoint, tmp_path / "a", format="test-pictures", **FAST)
        by_object = prepare(Pictures(data["sidecar"]), sd_checkpoint, tmp_path / "b", **FAST)
        assert by_name.n_samples == by_object.n_samples == len(data["pictures"])
        for out in ("a", "b"):
            for k, v in _by_key(tmp_path / out).items():
                assert torch.allclose(v["latents"], ref[k]["latents"], atol=1e-5), (out, k)
                assert torch.allclose(v["text_states"], ref[k]["text_states"], atol=1e-5), (out, k)
        assert by_object.index["source"]["format"] == "test-pictures"
    finally:
        SOURCES.pop("test-pictures", None)
    with pytest.raises(ArchsearchError, match="^format: bad value 'test-pictures'"):
        prepare(data["sidecar"], sd_checkpoint, tmp_path / "c", format="test-pictures", **FAST)


def test_one_prepare_at_a_time_per_cache_folder(sd_checkpoint, data, tmp_path):
    from archsearch._util import file_lock

    with file_lock(tmp_path / "c" / ".lock"):  # what a running prepare holds
        with pytest.raises(ArchsearchError, match=r"^out: .* is being written by another prepare"):
            prepare(data["sidecar"], sd_checkpoint, tmp_path / "c", **FAST)


def test_sdxl_two_encoders_pooled_and_crop_conditioning(sdxl_checkpoint, data, tmp_path):
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    prepare(data["sidecar"], sdxl_checkpoint, tmp_path / "c", crop="random", seed=3, **FAST)
    cache = LatentCache.open(tmp_path / "c")
    ix = cache.index
    assert (ix.context_dim, ix.pooled_dim, ix.has_add_time_ids, ix.has_pooled) == (64, 16, True, True)
    rows = _by_key(tmp_path / "c")
    tok = AutoTokenizer.from_pretrained(str(sdxl_checkpoint / "tokenizer"))
    tok2 = AutoTokenizer.from_pretrained(str(sdxl_checkpoint / "tokenizer_2"))
    te = CLIPTextModel.from_pretrained(str(sdxl_checkpoint / "text_encoder")).eval()
    te2 = CLIPTextModelWithProjection.from_pretrained(str(sdxl_checkpoint / "text_encoder_2")).eval()
    cap = data["captions"][0]
    with torch.no_grad():
        h1 = te(tok([cap], padding="max_length", max_length=16, return_tensors="pt").input_ids,
                output_hidden_states=True).hidden_states[-2]
        o2 = te2(tok2([cap], padding="max_length", max_length=16, return_tensors="pt").input_ids,
                 output_hidden_states=True)
    row = rows[data["names"][0]]
    torch.testing.assert_close(row["text_states"], torch.cat([h1, o2.hidden_states[-2]], -1)[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(row["pooled"], o2.text_embeds[0], atol=1e-5, rtol=1e-4)
    # (original h, w, crop top, left, target h, w): 40x48 resized to 32x38, a random left offset
    crops = {k: r["add_time_ids"].tolist() for k, r in rows.items()}
    for ids in crops.values():
        assert ids[:2] == [40, 48] and ids[2] == 0 and 0 <= ids[3] <= 6 and ids[4:] == [32, 32]
    assert len({c[3] for c in crops.values()}) > 1  # random crops differ between pictures...
    prepare(data["sidecar"], sdxl_checkpoint, tmp_path / "again", crop="random", seed=3, **FAST)
    assert {k: r["add_time_ids"].tolist() for k, r in _by_key(tmp_path / "again").items()} == crops  # ...but rerun the same


def test_bad_files_are_skipped_and_counted(sd_checkpoint, data, tmp_path):
    res = prepare(data["bad"], sd_checkpoint, tmp_path / "c", **FAST)
    assert res.n_samples == 3 and res.n_skipped == 5
    reasons = dict(LatentCache.open(tmp_path / "c").index.skipped["first"])
    assert reasons["truncated.jpg"].startswith("image does not decode")
    assert reasons["empty.png"] == "image is empty (0 bytes)"
    assert reasons["float.tif"] == "unsupported image mode 'F'"
    assert reasons["numbercap.png"] == "caption is not text (int)"
    assert reasons["nocaption.png"].startswith("no caption")
    assert res.skipped_reasons["image does not decode"] == 1


def test_video_clips_sampled_at_fps_and_an_undecodable_clip_is_skipped(sd_checkpoint, sd_parts, data, tmp_path):
    from archsearch.data._sources import decode_video

    res = prepare(data["video"], sd_checkpoint, tmp_path / "c", frames=3, fps=4, **FAST)
    assert res.n_samples == 3 and res.n_skipped == 1
    cache = LatentCache.open(tmp_path / "c")
    assert cache.index.kind == "video" and cache.index.latent_shape == (4, 3, 16, 16)
    assert cache.index.skipped["first"][0][0] == "broken.mp4"
    assert "video" in cache.index.skipped["first"][0][1]
    frames = decode_video(data["clips"][1], 3, 4)  # 8 fps clip at 4 fps: frames 0, 2, 4
    all8 = decode_video(data["clips"][1], 8, None)
    assert (frames == all8[[0, 2, 4]]).all()
    vae = sd_parts[0]
    from PIL import Image

    x = torch.cat([_reference_crop(Image.fromarray(f)) for f in frames])
    with torch.no_grad():
        z = (vae.encode(x).latent_dist.mode() - 0.1) * 0.5
    got = _by_key(tmp_path / "c")["clip_1.mp4"]["latents"]
    torch.testing.assert_close(got, z.permute(1, 0, 2, 3), atol=1e-5, rtol=1e-4)
    with pytest.raises(ArchsearchError, match="^frames: 3 frames from a imagefolder source"):
        prepare(data["sidecar"], sd_checkpoint, tmp_path / "x", frames=3, **FAST)


def test_teacher_generated_latents_from_prompts_are_reproducible(sd_checkpoint, data, tmp_path):
    kw = {**FAST, "steps": 2, "guidance": 3.0}
    prepare(data["prompts"], sd_checkpoint, tmp_path / "a", seed=1, **kw)
    prepare(data["prompts"], sd_checkpoint, tmp_path / "b", seed=1, **{**kw, "batch": 4})  # another batching
    prepare(data["prompts"], sd_checkpoint, tmp_path / "c", seed=2, **kw)
    a, b, c = (_by_key(tmp_path / n) for n in "abc")
    assert len(a) == 6 and LatentCache.open(tmp_path / "a").index.generated
    for k in a:
        torch.testing.assert_close(a[k]["latents"], b[k]["latents"], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(a[k]["latents"], c[k]["latents"])
    # the same latents as diffusers' own pipeline with that prompt's generator
    from diffusers import StableDiffusionPipeline

    from archsearch.data._prepare import _sha

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_checkpoint), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = data["captions"][0]
    key = next(k for k in a if len(k) == 16 and k == __import__("hashlib").sha256(prompt.encode()).hexdigest()[:16])
    seed = int.from_bytes(_sha(f"1:{key}")[:8], "big") >> 1
    ref = pipe(prompt, num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="latent",
               generator=[torch.Generator().manual_seed(seed)]).images
    torch.testing.assert_close(a[key]["latents"], ref[0], atol=1e-4, rtol=1e-4)


def test_reader_split_and_batches(sd_checkpoint, data, tmp_path):
    prepare(data["sidecar"], sd_checkpoint, tmp_path / "a", holdout=0.3, **FAST)
    prepare(data["sidecar"], sd_checkpoint, tmp_path / "b", holdout=0.3, **{**FAST, "shard_size": 6})  # re-cut
    a, b = LatentCache.open(tmp_path / "a"), LatentCache.open(tmp_path / "b")
    ha = a.split("holdout").keys
    assert ha == b.split("holdout").keys and ha == sorted(k for k in a.keys if is_holdout(k, 0.3))
    assert 0 < len(ha) < len(a) and set(ha).isdisjoint(a.split("train").keys)
    train = a.split("train")
    first = [x["index"].tolist() for x in train.batches(2, seed=5, epochs=3)]
    again = [x["index"].tolist() for x in train.batches(2, seed=5, epochs=3)]
    per = train.batches_per_epoch(2)
    assert first == again and len(first) == 3 * per and first[:per] != first[per : 2 * per]
    resumed = [x["index"].tolist() for x in train.batches(2, seed=5, start=per + 1, epochs=3)]
    assert resumed == first[per + 1 :]  # mid-epoch resume sees what an uninterrupted stream saw
    b0 = next(train.batches(2, seed=5))
    assert b0["latents"].shape == (2, 4, 16, 16) and b0["text_states"].shape == (2, 16, 32)
    assert b0["latents"].dtype == torch.float32 and "pooled" not in b0
    a.check_matches(teacher_hash=teacher_hash(sd_checkpoint), latent_channels=4, frames=1)
    with pytest.raises(ArchsearchError, match=r"it has latent_channels 4 \(needed: 16\), frames 1 \(needed: 8\)"):
        a.check_matches(teacher_hash=teacher_hash(sd_checkpoint), latent_channels=16, frames=8)


def test_resume_refuses_other_settings_and_names_the_parameter(sd_checkpoint, sdxl_checkpoint, data, tmp_path):
    prepare(data["sidecar"], sd_checkpoint, tmp_path / "c", **FAST)
    res = prepare(data["sidecar"], sd_checkpoint, tmp_path / "c", **FAST)
    assert res.encoded == 0 and res.n_samples == len(data["pictures"])  # complete: nothing to do
    with pytest.raises(ArchsearchError, match="^resolution: .* prepared with resolution 32, now 64"):
        prepare(data["sidecar"], sd_checkpoint, tmp_path / "c", resolution=64, **FAST)
    with pytest.raises(ArchsearchError, match="^teacher: "):
        prepare(data["sidecar"], sdxl_checkpoint, tmp_path / "c", **FAST)
    with pytest.raises(ArchsearchError, match="^source: "):
        prepare(data["bad"], sd_checkpoint, tmp_path / "c", **FAST)
    with pytest.raises(ArchsearchError, match="^resolution: bad value 33"):
        prepare(data["sidecar"], sd_checkpoint, tmp_path / "d", resolution=33, **FAST)
    with pytest.raises(ArchsearchError, match="no index.json .*has not finished"):
        (tmp_path / "c" / "index.json").unlink()
        LatentCache.open(tmp_path / "c")


def test_teacher_hash_is_stable_and_sees_the_weights(sd_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sd_checkpoint, copy)
    assert teacher_hash(copy) == teacher_hash(sd_checkpoint)
    w = copy / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    t = load_file(str(w))
    name = next(iter(t))
    t[name] = t[name] + 1.0
    save_file(t, str(w))
    assert teacher_hash(copy) != teacher_hash(sd_checkpoint)


def test_cli_prepares_and_maps_parameters_to_flags(sd_checkpoint, data, tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["data", "prepare", str(data["sidecar"]), "--teacher", str(sd_checkpoint), "--out",
                            str(tmp_path / "c"), "--workers", "0", "--batch", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "8 samples" in r.output and LatentCache.open(tmp_path / "c").index.n_samples == 8
    r = runner.invoke(app, ["data", "prepare", str(data["sidecar"]), "--teacher", str(sd_checkpoint), "--out",
                            str(tmp_path / "d"), "--resolution", "33", "--workers", "0"])
    assert r.exit_code == 2 and r.output.startswith("error: --resolution: bad value 33")


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_cache_and_encodes_nothing_twice(sd_checkpoint, data, tmp_path):
    """SIGKILL the CLI once a shard is on disk; the same command finishes the pass."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(48):
        F.make_picture(i).save(src / f"p{i:03d}.png")
        (src / f"p{i:03d}.txt").write_text(F.CAPTIONS[i % len(F.CAPTIONS)])
    opts = {"workers": 1, "batch": 2, "shard_size": 2, "dtype": "float32", "device": "cpu"}
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "archsearch.cli.main", "data", "prepare", str(src), "--teacher", str(sd_checkpoint),
           "--out", str(out), "--workers", "1", "--batch", "2", "--shard-size", "2", "--dtype", "float32",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    shards = out / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and any(shards.glob("shard-*.safetensors")):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.safetensors")}
    assert 1 <= len(before) < 24 and not (out / "index.json").exists(), "the run was not interrupted mid-way"

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.safetensors")}
    assert len(after) == 24 and all(after[n] == t for n, t in before.items())  # finished shards untouched
    ix = json.loads((out / "index.json").read_text())
    assert ix["runs"][-1]["encoded"] == 48 - 2 * len(before)  # only what was missing was encoded
    assert not list(shards.glob(".*.tmp"))

    prepare(src, sd_checkpoint, tmp_path / "whole", **opts)
    ref, got = _by_key(tmp_path / "whole"), _by_key(out)
    assert ref.keys() == got.keys()
    for k in ref:
        for f in ref[k]:
            assert torch.equal(ref[k][f], got[k][f]), (k, f)
    whole = json.loads((tmp_path / "whole" / "index.json").read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in ("runs", "shards", "teacher")}  # noqa: E731
    assert strip(whole) == strip(ix)


def test_aspect_ratio_buckets_keep_shapes_apart(sd_checkpoint, tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(6):
        F.make_picture(i, (40, 48) if i % 2 else (24, 56)).save(src / f"p{i}.png")
        (src / f"p{i}.txt").write_text(F.CAPTIONS[i])
    prepare(src, sd_checkpoint, tmp_path / "c", buckets=True, **FAST)
    cache = LatentCache.open(tmp_path / "c")
    assert cache.index.latent_shape is None and cache.index.resolution is None
    rows = _by_key(tmp_path / "c")
    wide, square = rows["p0.png"]["latents"].shape, rows["p1.png"]["latents"].shape
    assert wide[2] > wide[1] and wide != square  # the 24x56 pictures went to a wide bucket
    for b in cache.split("all").batches(2, seed=0, epochs=2):
        assert len({tuple(x.shape) for x in b["latents"]}) == 1

"""What a hostile probe of ``archsearch data prepare`` and of the latent cache found (issue 24):
damaged shards are refused with one line naming them and the command that repairs them, nothing
outside the data set is read, a huge caption costs what a normal one does, one honest rate, and
prepare across processes (torchrun) gives the bytes one process gives.

Tiny checkpoints and data sets built on disk (tests/diffusers_fixtures.py); nothing downloads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from archsearch.data import CacheFeed, LatentCache, TeacherEncoders, prepare
from archsearch.errors import ArchsearchError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diffusers_fixtures as F  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
#: the settings ``diffusers_fixtures.build_cache`` made ``sd_cache`` with (16 pictures, 2 shards)
CACHE_KW = {"workers": 0, "batch": 4, "shard_size": 8, "dtype": "float32", "device": "cpu", "holdout": 0.3}


def _garble(path: Path) -> None:
    """Finite garbage (0.25 everywhere) in a float32 shard's tensor data; its header intact."""
    blob = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(blob[:8], "little")
    blob[start:] = np.full((len(blob) - start) // 4, 0.25, np.float32).tobytes()
    path.write_bytes(bytes(blob))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(path)).items()}  # copies: not views of the file


def _read_all(cache_dir: Path) -> None:
    """What a run does with a cache: open it, draw training batches and the held-out batch."""
    cache = LatentCache.open(cache_dir)
    feed = CacheFeed(cache)
    for step in range(3):
        feed.draw(step, 4, torch.Generator(), slice(None), 0)
    cache.split("all").head(16)


def test_garbage_in_a_shard_is_refused_naming_it_and_the_printed_command_repairs_only_it(
        sd_checkpoint, pictures, sd_cache, tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    cache = tmp_path / "cache"
    shutil.copytree(sd_cache, cache)
    bad, good = cache / "shards" / "shard-000001.safetensors", cache / "shards" / "shard-000000.safetensors"
    before = _tensors(bad)
    _garble(bad)
    good_mtime = good.stat().st_mtime_ns
    with pytest.raises(ArchsearchError, match=f"^{bad}: bad shard"):
        LatentCache.open(cache).verify()  # every shard now, e.g. after copying a cache
    with pytest.raises(ArchsearchError) as err:
        _read_all(cache)  # what a run reads: the shard is checked on its first read
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: bad shard") and "checksum" in msg, msg
    cmd = re.search(r"to repair, run (archsearch data prepare .*) \(it re-encodes only the bad shards\)", msg)
    assert cmd, msg
    from archsearch.data._cache import shard_checksum

    for s in json.loads((cache / "index.json").read_text())["shards"]:  # the index holds checksums and sizes
        f = cache / s["file"]
        assert s["bytes"] == f.stat().st_size and (s["sha256"] == shard_checksum(f)) == (f != bad)

    # the command the error prints re-encodes that shard alone; the cache reads as before
    r = CliRunner().invoke(app, [*shlex.split(cmd.group(1))[1:], "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "encoded 8 this run" in r.output and "encoded again 1 shard(s) that failed their check" in r.output
    assert good.stat().st_mtime_ns == good_mtime
    after = _tensors(bad)  # (sd_cache may have been encoded on more threads: equal up to float rounding)
    assert after.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=1e-5, rtol=1e-5)
    _read_all(cache)


@pytest.mark.parametrize("damage", ["random bytes", "every shard truncated", "header length 2^62",
                                    "truncated, index of a cache without checksums"])
def test_a_damaged_shard_is_one_line_naming_it(damage, sd_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sd_cache, cache)
    shards = sorted((cache / "shards").glob("shard-*.safetensors"))
    if damage == "random bytes":
        shards[1].write_bytes(np.random.default_rng(0).bytes(shards[1].stat().st_size))
    elif damage == "header length 2^62":
        blob = bytearray(shards[0].read_bytes())
        blob[:8] = (2**62).to_bytes(8, "little")
        shards[0].write_bytes(bytes(blob))
    else:
        for s in shards:
            s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])
        if damage.startswith("truncated, index"):  # as written before shards had checksums
            ix = json.loads((cache / "index.json").read_text())
            ix["shards"] = [{k: v for k, v in s.items() if k not in ("sha256", "bytes")} for s in ix["shards"]]
            (cache / "index.json").write_text(json.dumps(ix))
    for kw in ({}, {"verify": False}):  # checksums checked, or skipped: the header and size checks stay
        with pytest.raises(ArchsearchError) as err:
            opened = LatentCache.open(cache, **kw)
            opened.split("all").head(16)
            opened.split("all").batch(list(range(len(opened))))
        msg = str(err.value)
        assert "\n" not in msg and re.match(rf"{cache}/shards/shard-00000[01]\.safetensors: bad shard", msg), msg
        assert "archsearch data prepare" in msg


def test_nothing_outside_the_dataset_folder_is_read_and_every_refusal_is_counted(sd_checkpoint, tmp_path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    F.make_picture(7, (32, 32)).save(outside / "secret.png")
    F.make_picture(8, (32, 32)).save(outside / "dir" / "x.png")
    (outside / "dir" / "x.txt").write_text("a secret")
    ds = tmp_path / "ds"
    ds.mkdir()
    for i in range(2):
        F.make_picture(i, (32, 32)).save(ds / f"p{i}.png")
    (ds / "p1.txt").write_text("a blue square")
    (ds / "link.png").symlink_to(outside / "secret.png")
    (ds / "link.txt").write_text("a red circle")
    (ds / "linked").symlink_to(outside / "dir")
    rows = [{"file_name": "p0.png", "text": "a red circle"}, {"file_name": "../outside/secret.png", "text": "x"},
            {"file_name": str(outside / "secret.png"), "text": "x"}, {"file_name": "gone.png", "text": "x"}]
    (ds / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    res = prepare(ds, sd_checkpoint, tmp_path / "c", workers=0, batch=2, dtype="float32", device="cpu")
    assert LatentCache.open(tmp_path / "c").keys == ["p0.png", "p1.png"]
    assert res.skipped_reasons == {"symlink points outside the dataset folder": 2,
                                   "metadata file_name leaves the dataset folder": 1,
                                   "metadata file_name is an absolute path": 1, "metadata row names no file": 1}
    why = dict(res.index["skipped"]["first"])
    assert why["link.png"].startswith(f"symlink points outside the dataset folder (to {outside / 'secret.png'}")
    assert why["linked"].startswith("symlink points outside the dataset folder (to the folder")
    assert set(why) == {"link.png", "linked", "../outside/secret.png", str(outside / "secret.png"), "gone.png"}


def test_a_10mb_caption_is_cut_before_it_is_tokenized(sd_checkpoint, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    huge = "a red circle " * (10 * 2**20 // 13)
    bound = TeacherEncoders(sd_checkpoint).text[0].max_caption_chars
    assert 0 < bound < 10_000
    for name, caption in (("huge", huge), ("cut", huge[:bound])):
        d = tmp_path / name
        d.mkdir()
        F.make_picture(0, (32, 32)).save(d / "p0.png")
        F.make_picture(1, (32, 32)).save(d / "p1.png")
        rows = [{"file_name": "p0.png", "text": caption}, {"file_name": "p1.png", "text": "a blue square"}]
        (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    seen: list[int] = []
    call = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kw):  # noqa: ANN001, ANN202
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text or []))
        return call(self, text, *args, **kw)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    kw = {"workers": 0, "batch": 2, "dtype": "float32", "device": "cpu"}
    t0 = time.perf_counter()
    prepare(tmp_path / "huge", sd_checkpoint, tmp_path / "c_huge", **kw)
    took = time.perf_counter() - t0
    assert seen and max(seen) <= bound  # the tokenizer never saw the 10 MB
    assert took < 30, took  # today's code: about a minute on a 2-core machine
    prepare(tmp_path / "cut", sd_checkpoint, tmp_path / "c_cut", **kw)
    a, b = LatentCache.open(tmp_path / "c_huge").split("all"), LatentCache.open(tmp_path / "c_cut").split("all")
    assert torch.equal(a.batch([0, 1])["text_states"], b.batch([0, 1])["text_states"])


def test_one_rate_and_zero_holdout_says_quality_is_scored_on_training_samples(sd_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    src = F.build_pictures(tmp_path / "pics", n=4)
    said: list[str] = []
    res = prepare(src, sd_checkpoint, tmp_path / "a", workers=0, batch=2, dtype="float32", device="cpu",
                  holdout=0.0, progress=lambda phase, desc, done, total: said.append(desc))
    assert said and not [d for d in said if "/s" in d]  # the progress display computes the rate, not the text
    assert 0 < res.encode_time_s <= res.wall_time_s and res.samples_per_s == res.encoded / res.encode_time_s

    r = CliRunner().invoke(app, ["data", "prepare", str(src), "--teacher", str(sd_checkpoint), "--out",
                                 str(tmp_path / "b"), "--workers", "0", "--batch", "2", "--device", "cpu",
                                 "--holdout", "0"])
    assert r.exit_code == 0, r.output
    summary = next(line for line in r.output.splitlines() if line.startswith("4 samples in"))
    assert "(0 holdout: quality will be scored on training samples" in summary
    assert len(re.findall(r"/s\b", summary)) == 1 and re.search(r"encoded 4 this run at [\d.]+ samples/s", summary)


def test_a_launcher_environment_without_a_rendezvous_is_one_line(sd_checkpoint, pictures, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ArchsearchError, match=r"^WORLD_SIZE is 2 but RANK, MASTER_ADDR, MASTER_PORT is not set"):
        prepare(pictures, sd_checkpoint, tmp_path / "c", **CACHE_KW)
    res = prepare(pictures, sd_checkpoint, tmp_path / "c", distributed=False, **CACHE_KW)  # this process alone
    assert (res.world, res.n_samples) == (1, 16)


@pytest.mark.slow
def test_torchrun_two_processes_resume_and_repair_give_the_bytes_of_one_process(sd_checkpoint, pictures, tmp_path):
    """Shard i to process i mod 2; a shard deleted and one garbled, then the same repair by one
    process and by two (gloo, CPU): the same files, byte for byte, and the good shards untouched."""
    kw = {**CACHE_KW, "batch": 2, "shard_size": 4}
    prepare(pictures, sd_checkpoint, tmp_path / "ref", **kw)
    for name in ("one", "two"):
        shutil.copytree(tmp_path / "ref", tmp_path / name)
        (tmp_path / name / "shards" / "shard-000001.safetensors").unlink()
        _garble(tmp_path / name / "shards" / "shard-000002.safetensors")
    kept = {i: (tmp_path / "two" / "shards" / f"shard-00000{i}.safetensors").stat().st_mtime_ns for i in (0, 3)}

    one = prepare(pictures, sd_checkpoint, tmp_path / "one", **kw)
    assert (one.encoded, one.shards_written, one.shards_bad) == (8, 2, 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "archsearch.cli.main", "data", "prepare", str(pictures), "--teacher", str(sd_checkpoint),
           "--out", str(tmp_path / "two"), "--workers", "0", "--batch", "2", "--shard-size", "4",
           "--dtype", "float32", "--device", "cpu", "--holdout", "0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summaries = [line for line in r.stdout.splitlines() if line.startswith(f"16 samples in {tmp_path / 'two'}")]
    assert len(summaries) == 1 and "by 2 processes" in summaries[0], r.stdout  # process 0 reports
    assert "encoded again 1 shard(s)" in r.stdout

    for i in range(4):
        name = f"shard-00000{i}.safetensors"
        assert (tmp_path / "two" / "shards" / name).read_bytes() == (tmp_path / "one" / "shards" / name).read_bytes()
    assert {i: (tmp_path / "two" / "shards" / f"shard-00000{i}.safetensors").stat().st_mtime_ns for i in (0, 3)} == kept
    for i in (1, 2):  # re-encoded as the first pass encoded them
        got, ref = (_tensors(tmp_path / d / "shards" / f"shard-00000{i}.safetensors") for d in ("two", "ref"))
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    one_ix, two_ix = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("one", "two"))
    assert two_ix["runs"][-1]["processes"] == 2 and two_ix["runs"][-1]["encoded"] == 8
    strip = lambda d: {k: v for k, v in d.items() if k != "runs"}  # noqa: E731 - runs hold start times
    assert strip(one_ix) == strip(two_ix)
    _read_all(tmp_path / "two")

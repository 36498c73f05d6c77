"""`archsearch eval`: the metric code against independent references on fixed tensors, an
evaluation of a tiny student pipeline against the tiny SD teacher with tiny random-weight
feature extractors injected through the same loading path, resume after a real kill -9, and the
one-line errors (missing Inception weights, other settings in the same folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from archsearch.cli.main import app
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.evaluate import (
    INCEPTION_FILE,
    evaluate,
    frechet_distance,
    load_clip,
    load_eval,
    load_inception,
    parse_seeds,
    plan_items,
    read_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
PROMPTS = ["a red circle", "the blue sky", "a green cat", "a black box"]


# --------------------------------------------------------------------------- fixtures


class TinyFeatures(torch.nn.Module):
    """A random-weight stand-in for the FID Inception: uint8 (N, 3, H, W) -> (N, 6)."""

    num_features = 6

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.float() / 127.5 - 1)).mean((2, 3))


@pytest.fixture(scope="module")
def student(sd_checkpoint, tmp_path_factory) -> Path:
    """A tiny (untrained, seeded) archsearch student in the SD teacher's pipeline."""
    from archsearch.data import seeded
    from archsearch.distill import builtin_teacher_candidate, export_pipeline
    from archsearch.model import build_model

    cand = builtin_teacher_candidate("image", width=16, resolution=16, latent_channels=4, context_dim=32,
                                     context_length=16)
    with seeded(0):
        model = build_model(cand)
    return export_pipeline(model, sd_checkpoint, tmp_path_factory.mktemp("student") / "pipeline")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "captions.txt"
    p.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")
    return p


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random-weight transformers CLIP (model + processor) saved to a folder."""
    import diffusers_fixtures as F
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    tok = CLIPTokenizer.from_pretrained(str(F.write_clip_tokenizer(root / "tok")))
    torch.manual_seed(0)
    n = len(tok)
    cfg = CLIPConfig(
        text_config={"vocab_size": n, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": n - 1,
                     "bos_token_id": n - 2, "pad_token_id": n - 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(root / "clip")
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(root / "clip")
    return root / "clip"


@pytest.fixture()
def no_hub_weights(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: no Inception or AlexNet weights on this 'machine'."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


# --------------------------------------------------------------------------- independent references


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two feature sets, computed here with numpy and scipy."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def features_of(paths: list[Path], size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image, ImageOps

    pics = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        if size is not None:
            im = ImageOps.fit(im, size, Image.BICUBIC)
        pics.append(np.asarray(im))
    x = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return TinyFeatures()(x).double().numpy()


# --------------------------------------------------------------------------- metric code


def test_fid_of_identical_sets_is_zero_and_of_two_gaussians_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-8)
    # a shifted, rescaled and correlated second set
    mix = np.eye(6) + 0.3 * rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ mix + np.array([1.0, -0.5, 0.0, 2.0, 0.25, -1.0])
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(numpy_fid(a, b), rel=1e-7)
    assert got > 5  # not trivially zero
    with pytest.raises(ArchsearchError, match="at least 2 pictures"):
        frechet_distance(torch.from_numpy(a[:1]), torch.from_numpy(b))


def test_prompts_seeds_and_the_plan():
    assert parse_seeds("0") == [0] and parse_seeds("3,1,3") == [3, 1] and parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds([5, 6]) == [5, 6]
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(ParameterError, match=r"^seeds: bad value"):
            parse_seeds(bad)
    items = plan_items(["x", "y"], [0, 7])
    assert [(i.index, i.name, i.prompt) for i in items] == [
        (0, "p000000_s0", "x"), (1, "p000000_s7", "x"), (2, "p000001_s0", "y"), (3, "p000001_s7", "y")]


def test_prompt_file_errors_name_the_file(tmp_path):
    with pytest.raises(ParameterError, match=r"^prompts_file: .*nope\.txt: no such file"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ParameterError, match="no captions"):
        read_prompts(tmp_path / "blank.txt")
    (tmp_path / "p.txt").write_text("a\n\n b \nc\n")
    assert read_prompts(tmp_path / "p.txt") == ["a", "b", "c"] and read_prompts(tmp_path / "p.txt", 2) == ["a", "b"]


def test_missing_inception_weights_is_one_line_naming_the_file_and_where(no_hub_weights, tmp_path, student, prompts,
                                                                         pictures):
    with pytest.raises(ParameterError) as exc:
        load_inception(None)
    msg = str(exc.value)
    assert msg.startswith("inception: ") and INCEPTION_FILE in msg and str(no_hub_weights) in msg
    assert "\n" not in msg
    with pytest.raises(ParameterError, match=r"^inception: .*nope\.pth: no such file"):
        load_inception(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ParameterError, match=r"junk\.pth: not a weights file"):
        load_inception(tmp_path / "junk.pth")
    # the command stops before drawing anything, with one line naming its flag, the file and the folder
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", str(student), "--prompts", str(prompts), "--reference", str(pictures), "--out",
                            str(out), "--device", "cpu", "--no-progress", "--no-report"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --inception: ") and INCEPTION_FILE in lines[0], r.output
    assert not (out / "student").exists()


def test_clip_folder_errors(tmp_path):
    with pytest.raises(ParameterError, match=r"^clip: .*: no CLIP model here"):
        load_clip(tmp_path)


# --------------------------------------------------------------------------- evaluation


def test_eval_student_against_teacher_and_reference(student, sd_checkpoint, prompts, pictures, tiny_clip, tmp_path,
                                                    no_hub_weights):
    """Every metric of a real evaluation equals what is computed here independently from the
    files it wrote; item (prompt, seed) is what the teacher's pipeline draws from that seed."""
    seen = []
    out = tmp_path / "eval"
    res = evaluate(student, prompts, out, teacher=sd_checkpoint, steps=2, guidance=5.0, seeds="0,1",
                   reference=pictures, inception=TinyFeatures(), clip=tiny_clip, batch=3, device="cpu",
                   progress=lambda *a: seen.append(a))
    m = json.loads((out / "metrics.json").read_text())
    assert m == res.metrics and res.drawn == {"student": 8, "teacher": 8} and res.reused == {"student": 0, "teacher": 0}
    assert m["images"] == 8 and m["n_prompts"] == 4 and (m["height"], m["width"]) == (32, 32)
    assert {a[0] for a in seen} == {"student", "teacher", "metrics"}
    assert seen[-1][2] == seen[-1][3]  # progress reached its total

    run = load_eval(out)
    names = [it.name for it in run.items]
    stu = [out / "student" / f"{n}.png" for n in names]
    tea = [out / "teacher" / f"{n}.png" for n in names]
    ref = sorted(pictures.glob("*.png"))
    # FID: the tiny extractor's features, recomputed here, through numpy/scipy
    fs, ft, fr = features_of(stu), features_of(tea), features_of(ref, (32, 32))
    assert m["student"]["fid"] == pytest.approx(numpy_fid(fr, fs), rel=1e-6)
    assert m["teacher"]["fid"] == pytest.approx(numpy_fid(fr, ft), rel=1e-6)
    assert m["agreement"]["fid"] == pytest.approx(numpy_fid(ft, fs), rel=1e-6)
    assert m["reference"] == {"folder": str(pictures), "images": len(ref)}
    # latent MSE and PSNR from the files
    from PIL import Image
    from safetensors.torch import load_file

    ls = torch.stack([load_file(str(out / "student" / "latents" / f"{n}.safetensors"))["latents"] for n in names])
    lt = torch.stack([load_file(str(out / "teacher" / "latents" / f"{n}.safetensors"))["latents"] for n in names])
    assert ls.shape == (8, 4, 16, 16)
    assert m["agreement"]["latent_mse"] == pytest.approx(float(((ls.double() - lt.double()) ** 2).mean()), rel=1e-9)
    a = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in stu])
    b = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in tea])
    psnr = np.mean([-10 * np.log10(((x - y) ** 2).mean()) for x, y in zip(a, b)])
    assert m["agreement"]["psnr"] == pytest.approx(psnr, rel=1e-9)
    assert m["agreement"]["lpips"] is None and any("LPIPS skipped" in n for n in m["notes"])
    # CLIP score: 100 * max(cos, 0) with the same CLIP, through its towers directly
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    proc = CLIPProcessor.from_pretrained(str(tiny_clip))
    with torch.no_grad():
        for which, files in (("student", stu), ("teacher", tea)):
            inp = proc(text=[it.prompt for it in run.items], images=[Image.open(p).convert("RGB") for p in files],
                       return_tensors="pt", padding=True)
            t = model.text_projection(model.text_model(input_ids=inp["input_ids"],
                                                       attention_mask=inp["attention_mask"]).pooler_output)
            v = model.visual_projection(model.vision_model(pixel_values=inp["pixel_values"]).pooler_output)
            cos = torch.nn.functional.cosine_similarity(t, v, dim=-1)
            assert m[which]["clip_score"] == pytest.approx(float((100 * cos).clamp(min=0).mean()), rel=1e-5)
    # item (prompt 1, seed 1) is the teacher pipeline's own picture from Generator().manual_seed(1)
    from archsearch.distill import load_pipeline

    pipe = load_pipeline(sd_checkpoint, "cpu")
    own = pipe(PROMPTS[1], num_inference_steps=2, guidance_scale=5.0, height=32, width=32,
               generator=torch.Generator().manual_seed(1)).images[0]
    assert np.array_equal(np.asarray(own), np.asarray(Image.open(out / "teacher" / "p000001_s1.png")))
    assert not np.array_equal(a[0], b[0])  # student and teacher differ

    # a second run reuses every sample and only scores them again, to the same figures
    again = evaluate(student, prompts, out, teacher=sd_checkpoint, steps=2, guidance=5.0, seeds="0,1",
                     reference=pictures, inception=TinyFeatures(), clip=tiny_clip, batch=3, device="cpu")
    assert again.drawn == {"student": 0, "teacher": 0} and again.reused == {"student": 8, "teacher": 8}
    for k in ("student", "teacher", "agreement"):
        assert again.metrics[k] == m[k]
    # other settings into the same folder: one line naming what differs
    with pytest.raises(ParameterError, match=r"^out: .* holds samples drawn with steps 2 \(now 3\)"):
        evaluate(student, prompts, out, teacher=sd_checkpoint, steps=3, guidance=5.0, seeds="0,1", device="cpu",
                 fid=False)


def test_a_model_against_itself_agrees_exactly(student, prompts, tmp_path):
    res = evaluate(student, prompts, tmp_path / "self", teacher=student, steps=1, seeds="0", limit=3, batch=2,
                   inception=TinyFeatures(), device="cpu")
    agr = res.metrics["agreement"]
    assert agr["latent_mse"] == 0.0 and agr["psnr"] == 100.0 and agr["fid"] == pytest.approx(0.0, abs=1e-6)
    assert res.metrics["images"] == 3 and res.metrics["student"]["fid"] is None  # no reference folder


def test_a_few_step_model_is_drawn_in_its_own_steps_and_the_teacher_in_its_usual(student, prompts, tmp_path):
    """Without --steps / --guidance a model that records its drawing (``fewstep.json``, written
    by ``archsearch fewstep``) is drawn as it was distilled to be; the teacher as usual (25, 7.5)."""
    import shutil

    few = tmp_path / "few"
    shutil.copytree(student, few)
    (few / "fewstep.json").write_text(json.dumps({"steps": 2, "guidance": 1.0, "calls_per_step": 1,
                                                  "method": "lcm", "scheduler": {"class": "DDIMScheduler"}}))
    out = tmp_path / "e"
    evaluate(few, prompts, out, teacher=student, seeds="0", limit=1, fid=False, device="cpu")
    settings = json.loads((out / "eval.json").read_text())
    assert (settings["steps"], settings["guidance"]) == (2, 1.0)
    assert (settings["teacher_steps"], settings["teacher_guidance"]) == (25, 7.5)
    out2 = tmp_path / "e2"  # asked for: both draw so
    evaluate(few, prompts, out2, teacher=student, steps=3, guidance=2.0, seeds="0", limit=1, fid=False, device="cpu")
    settings = json.loads((out2 / "eval.json").read_text())
    assert (settings["steps"], settings["guidance"], settings["teacher_steps"]) == (3, 2.0, 3)


def test_eval_refuses_what_it_cannot_draw(tmp_path, prompts, student):
    with pytest.raises(ParameterError, match=r"^model: .*: no diffusers pipeline here"):
        evaluate(tmp_path, prompts, tmp_path / "o", device="cpu")
    with pytest.raises(ParameterError, match=r"^steps: bad value 0"):
        evaluate(student, prompts, tmp_path / "o", steps=0, device="cpu")
    with pytest.raises(ParameterError, match=r"^height: bad value 30"):
        evaluate(student, prompts, tmp_path / "o", height=30, device="cpu")
    with pytest.raises(ParameterError, match=r"^reference: .*: 0 pictures"):
        (tmp_path / "empty").mkdir()
        evaluate(student, prompts, tmp_path / "o", reference=tmp_path / "empty", device="cpu")
    assert not (tmp_path / "o").exists()


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from archsearch.evaluate import evaluate

    def progress(phase, desc, done, total):
        print(phase, done, total, flush=True)
        if phase == "student" and 0 < done < total:
            time.sleep(0.4)  # a window for the test's kill between two batches

    evaluate(sys.argv[1], sys.argv[2], sys.argv[3], steps=2, seeds=[0, 1], batch=2, fid=False, device="cpu",
             progress=progress)
""")


@pytest.mark.slow
def test_eval_resumes_after_kill_9_losing_at_most_one_batch(student, prompts, pictures, tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(_KILL_SCRIPT)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(student), str(prompts), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    reported = 0
    deadline = time.time() + 240
    try:
        for line in proc.stdout:  # kill as soon as two of the four batches are reported
            parts = line.split()
            if len(parts) == 3 and parts[0] == "student":
                reported = int(parts[1])
                if reported >= 4:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            assert time.time() < deadline, "the evaluation did not report progress in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and reported == 4, (proc.returncode, reported, proc.stderr.read()[-2000:])
    assert not (out / "metrics.json").exists()
    on_disk = len(list((out / "student").glob("*.png")))
    assert 4 <= on_disk < 8

    resumed = evaluate(student, prompts, out, steps=2, seeds=[0, 1], batch=2, reference=pictures,
                       inception=TinyFeatures(), device="cpu")
    assert resumed.reused["student"] >= reported  # nothing reported done was drawn again
    assert resumed.reused["student"] + resumed.drawn["student"] == 8 and resumed.drawn["student"] <= 8 - reported
    assert not list(out.rglob(".*.tmp"))
    straight = evaluate(student, prompts, tmp_path / "straight", steps=2, seeds=[0, 1], batch=2, reference=pictures,
                        inception=TinyFeatures(), device="cpu")
    assert resumed.metrics["student"] == straight.metrics["student"]
    for it in load_eval(out).items:
        assert (out / "student" / f"{it.name}.png").read_bytes() == \
            (tmp_path / "straight" / "student" / f"{it.name}.png").read_bytes()


def test_cli_eval_writes_metrics_and_the_model_report(student, sd_checkpoint, prompts, tmp_path, no_hub_weights):
    out, rep = tmp_path / "ev", tmp_path / "rep"
    r = runner.invoke(app, ["eval", str(student), "--prompts", str(prompts), "--teacher", str(sd_checkpoint),
                            "--steps", "1", "--seeds", "0", "--limit", "2", "--no-fid", "--out", str(out),
                            "--report", str(rep), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert str(out / "metrics.json") in r.output and str(rep / "index.html") in r.output
    assert "vs teacher: FID -, latent MSE" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 2 and m["agreement"]["fid"] is None and m["agreement"]["latent_mse"] > 0
    html = (rep / "index.html").read_text()
    assert html.count('<img class="sample" alt=') == 4 and html.count('src="data:image/png;base64,') >= 4
    r = runner.invoke(app, ["eval", str(student), "--prompts", str(prompts), "--steps", "0", "--out", str(out),
                            "--no-progress"])
    assert r.exit_code == 2 and r.output.strip() == "error: --steps: bad value 0 (allowed: an integer >= 1)", r.output

"""The model report (``reports/trained/<id>/index.html``) in headless Chromium, as
tests/test_report_browser.py checks the study report: it loads offline with no console error,
no exception and no request; its figures have data; the student and teacher pictures are
embedded and decoded; a user's prompt stays text."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from test_evaluate import TinyFeatures
from test_report_browser import CHROMIUM, PLOT_DATA, DevTools, assert_real_png, open_page, problems, screenshot

from archsearch.evaluate import evaluate
from archsearch.report import default_model_report, write_model_report

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).resolve().parent.parent
XSS = "a red <img src=x onerror=alert(3)> circle"
#: the columns `archsearch train` writes to log.csv (distill's _Logger)
LOG_COLUMNS = ("step", "loss", "task", "kd_output", "kd_feature", "lr", "samples_per_s", "holdout_kd", "elapsed_s")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found ({CHROMIUM}): `make test` installs it (apt-get install -y chromium); "
                    "deselect this check with -m 'not browser'", pytrace=False)
    profile = tempfile.mkdtemp(prefix="archsearch-chromium-")
    dt = DevTools(CHROMIUM, profile, tmp_path_factory.mktemp("chromium") / "chromium.log")
    try:
        yield dt
    finally:
        dt.close()
        shutil.rmtree(profile, ignore_errors=True)


def trained_folder(root: Path, sd_checkpoint: Path) -> Path:
    """What `archsearch train` leaves with a diffusers teacher: the model, its pipeline/,
    log.csv (losses every step, the held-out KD loss every 5) and metrics.json."""
    from archsearch.data import seeded
    from archsearch.distill import builtin_teacher_candidate, export_pipeline
    from archsearch.model import build_model

    cand = builtin_teacher_candidate("image", width=16, resolution=16, latent_channels=4, context_dim=32,
                                     context_length=16)
    with seeded(0):
        model = build_model(cand)
    model.save_pretrained(root)
    export_pipeline(model, sd_checkpoint, root / "pipeline")
    with open(root / "log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LOG_COLUMNS)
        for s in range(1, 21):
            loss = 2.0 / s ** 0.5
            w.writerow([s, loss, loss / 3, loss / 4, loss / 2, 1e-3, 10.0, (0.3 / s ** 0.3) if s % 5 == 0 else "",
                        0.1 * s])
    (root / "metrics.json").write_text(json.dumps({"candidate": cand.id, "steps": 20, "quality": 0.12,
                                                   "quality_raw": 0.13}))
    return root


def test_model_report_in_chromium(browser: DevTools, sd_checkpoint: Path, pictures: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no LPIPS weights: a note, not a download
    model = trained_folder(tmp_path / "trained" / "m", sd_checkpoint)
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{XSS}\nthe blue sky\na green cat\n")
    evaluate(model, prompts, model / "eval", teacher=sd_checkpoint, steps=2, seeds="0,1", reference=pictures,
             inception=TinyFeatures(), batch=3, device="cpu")
    monkeypatch.chdir(tmp_path)
    out = write_model_report(model, table=ROOT / "latency_tables" / "tiny-cpu-r16.csv", max_samples=4)
    assert out == default_model_report(model) and out.parent.parent == Path("reports") / "trained"

    sid, events = open_page(browser, out.resolve())
    assert problems(events) == []
    cid = json.loads((model / "metrics.json").read_text())["candidate"]
    assert browser.evaluate(sid, "document.title") == f"archsearch model report: {cid}"
    plots = browser.evaluate(sid, PLOT_DATA)
    assert [p["id"] for p in plots] == ["fig-loss", "fig-holdout", "fig-latency"]
    for p in plots:
        assert p["traces"] > 0 and p["points"] > 0 and p["rendered"] > 0, p
    # 4 pairs of decoded pictures; the prompt with markup is text, not an element
    pics = browser.evaluate(sid, "Array.from(document.querySelectorAll('img.sample')).map(i => "
                                 "[i.alt, i.complete && i.naturalWidth])")
    assert [p[1] for p in pics] == [32] * 8, pics
    assert [p[0] for p in pics[:2]] == ["student p000000_s0", "teacher p000000_s0"]
    assert browser.evaluate(sid, "document.querySelectorAll('img').length") == 8
    assert XSS in browser.evaluate(sid, "document.getElementById('samples').textContent")
    metrics = browser.evaluate(sid, "document.getElementById('metrics').textContent")
    m = json.loads((model / "eval" / "metrics.json").read_text())
    assert f"{m['student']['fid']:.4g}" in metrics and f"{m['agreement']['latent_mse']:.4g}" in metrics
    assert "LPIPS skipped" in metrics
    png = screenshot(browser, sid, tmp_path / "model_report.png")
    assert_real_png(png, min_height=1500)
    assert problems([ev for ev in browser.events if ev.get("sessionId") == sid]) == []

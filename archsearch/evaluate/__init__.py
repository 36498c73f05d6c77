"""Evaluation of a trained model by what it draws (``archsearch eval``).

* :func:`evaluate` -- draw ``prompts x seeds`` from a prompt file with a trained model's
  diffusers pipeline (:func:`archsearch.distill.load_pipeline`; an ``archsearch train`` output
  or a pipeline folder) and, with ``teacher``, with the teacher's on the same prompts and seeds;
  then FID against a reference folder (or the teacher's samples), CLIP score with a local CLIP,
  and agreement with the teacher (latent MSE, PSNR, LPIPS where its weights are local). Samples
  are written as they are drawn (resumable: a kill -9 loses at most one batch), progress goes
  through ``progress(phase, description, done, total)``, and under ``accelerate launch`` the
  batches are spread over the processes. Results: ``out/metrics.json`` (:class:`EvalResult`).
* :func:`load_eval` (:class:`EvalRun`) -- an evaluation folder read back (the model report).
* The metric pieces: :func:`load_inception` (torch-fidelity's FID Inception from a local file,
  :data:`INCEPTION_FILE`, or an injected ``nn.Module``), :func:`frechet_distance` (torchmetrics'
  FID statistics), :func:`load_clip` / :class:`ClipScorer`, :func:`psnr`, :func:`load_lpips`.
* :func:`read_prompts`, :func:`parse_seeds`, :func:`plan_items` (:class:`Item`),
  :func:`model_id`.

Nothing here downloads: the Inception, CLIP and LPIPS weights are local files, and a missing
one is a one-line :class:`~archsearch.errors.ParameterError` naming the file and where to put it
(LPIPS, being optional, is skipped with a note instead).
"""

from __future__ import annotations

from archsearch.evaluate._evaluate import (
    EVAL_FILE,
    METRICS_FILE,
    EvalResult,
    EvalRun,
    evaluate,
    load_eval,
    model_id,
    parse_seeds,
)
from archsearch.evaluate._metrics import (
    INCEPTION_FILE,
    ClipScorer,
    FidPairs,
    frechet_distance,
    hub_checkpoints,
    load_clip,
    load_inception,
    load_lpips,
    psnr,
)
from archsearch.evaluate._samples import Item, plan_items, read_prompts

__all__ = [
    "EVAL_FILE",
    "INCEPTION_FILE",
    "METRICS_FILE",
    "ClipScorer",
    "EvalResult",
    "EvalRun",
    "FidPairs",
    "Item",
    "evaluate",
    "frechet_distance",
    "hub_checkpoints",
    "load_clip",
    "load_eval",
    "load_inception",
    "load_lpips",
    "model_id",
    "parse_seeds",
    "plan_items",
    "psnr",
    "read_prompts",
]

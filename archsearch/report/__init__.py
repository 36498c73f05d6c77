"""HTML reports of a search: ``reports/<study>/index.html`` and study comparisons.

- :func:`load_study` reads a study folder written by the store (trials.csv, meta.json,
  pareto/*.yaml and the optional latency_breakdown.csv / validation.csv).
- :func:`write_report` writes the self-contained, offline Plotly page of one study.
- :func:`write_pngs` writes figures as static PNGs (kaleido; ``archsearch report --png DIR``).
- :func:`write_model_report` writes one trained model's page (``reports/trained/<id>/``): its
  evaluation's metrics and pictures beside the teacher's, training curves, UNet latency per step count.
- :func:`write_compare` overlays the fronts of two or more studies with their hypervolumes
  against a common reference point.
"""

from archsearch.report._data import Objective, StudyData, load_study
from archsearch.report._model_report import default_model_report, render_model_report, write_model_report
from archsearch.report._report import render_compare, render_report, write_compare, write_pngs, write_report

__all__ = [
    "Objective",
    "StudyData",
    "default_model_report",
    "load_study",
    "render_compare",
    "render_model_report",
    "render_report",
    "write_compare",
    "write_model_report",
    "write_pngs",
    "write_report",
]

"""The distillation losses: feature-tap pairing and the timestep-aware KD objective.

Per sample ``i`` of a batch:

* ``task_i = mean((s_i - y_i)^2)`` -- the task loss against the noise process's target ``y``
  (noise, velocity or flow, :class:`~archsearch.distill.NoiseProcess`);
* ``out_i = mean((s_i - p_i)^2)`` -- output KD against the teacher's prediction ``p``;
* ``feat_i = (1/P) sum_k mean((proj_k(f^s_k,i) - f^t_k,i)^2)`` -- feature KD over the ``P`` pairs
  of stage outputs (:func:`pair_taps`: within the down / mid / up path, taps of the same
  spatial size paired in order, aligned at the deepest one; ``proj_k`` a 1x1 convolution,
  trained with the student, when the widths differ, else the identity);

and the timestep-aware rescaling of SnapGen: every KD term is rescaled to the task loss of the
same sample (so, of the same timestep) with a detached ratio::

    loss = mean_i [ task_i + kd_output * sg(task_i / (out_i + eps)) * out_i
                           + kd_feature * sg(task_i / (feat_i + eps)) * feat_i ],   eps = 1e-8

(``sg`` = stop-gradient). Each KD term thus carries the task loss's magnitude at that timestep,
and ``kd_output`` / ``kd_feature`` weigh them relative to it. With both weights at 0 the
objective is the plain task loss (how the built-in teacher is trained).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["distill_loss", "make_projections", "pair_taps", "tap_key"]

_EPS = 1e-8


def _segment(tap: str) -> tuple[str, int]:
    head, _, idx = tap.partition(".")
    return head, int(idx) if idx.isdigit() else 0


def pair_taps(
    student: dict[str, tuple[int, ...]], teacher: dict[str, tuple[int, ...]]
) -> list[tuple[str, str]]:
    """Pair student and teacher feature taps of the same spatial size, in order, path by path.

    ``student`` / ``teacher`` map tap name (``'down.i'``, ``'mid'``, ``'up.i'``) to a feature
    shape ``(B, C, *spatial)``. Within each path (down, mid, up) the taps of one spatial size
    are paired in network order, aligned at the end of that size's run: the last student tap
    at 16x16 with the last teacher tap at 16x16 (the deepest features at that resolution), the
    one before with the one before, and so on. Taps with no partner are left out.
    """
    pairs: list[tuple[str, str]] = []
    for seg in ("down", "mid", "up"):
        s_taps = sorted((k for k in student if _segment(k)[0] == seg), key=lambda k: _segment(k)[1])
        t_taps = sorted((k for k in teacher if _segment(k)[0] == seg), key=lambda k: _segment(k)[1])
        by_size: dict[tuple[int, ...], list[str]] = {}
        for k in t_taps:
            by_size.setdefault(tuple(teacher[k][2:]), []).append(k)
        s_by_size: dict[tuple[int, ...], list[str]] = {}
        for k in s_taps:
            s_by_size.setdefault(tuple(student[k][2:]), []).append(k)
        seg_pairs = []
        for size, s_list in s_by_size.items():
            t_list = by_size.get(size, [])
            n = min(len(s_list), len(t_list))
            if n:
                seg_pairs += list(zip(s_list[-n:], t_list[-n:]))
        pairs += sorted(seg_pairs, key=lambda p: s_taps.index(p[0]))
    return pairs


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def distill_loss(
    student_pred: torch.Tensor,
    target: torch.Tensor,
    teacher_pred: torch.Tensor | None,
    student_feats: dict[str, torch.Tensor],
    teacher_feats: dict[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    projections: nn.ModuleDict,
    kd_output: float = 1.0,
    kd_feature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The rescaled multi-level objective of the module docstring; returns ``(loss, parts)``.

    ``teacher_pred`` / ``teacher_feats`` are only read for a KD term with a weight above 0.
    """
    task = _per_sample_mse(student_pred, target)
    loss = task
    parts: dict[str, float] = {"task": float(task.mean().detach())}
    if kd_output > 0:
        out = _per_sample_mse(student_pred, teacher_pred)
        w = (task / (out + _EPS)).detach()
        loss = loss + kd_output * w * out
        parts["kd_output"] = float(out.mean().detach())
    if kd_feature > 0 and pairs:
        terms = []
        for s, t in pairs:
            fs = student_feats[s]
            proj = projections[tap_key(s)] if tap_key(s) in projections else None
            if proj is not None:
                fs = proj(fs)
            per_row = _per_sample_mse(fs, teacher_feats[t])
            # video features are (B * T, C, H, W), sample-major: average each sample's frames
            terms.append(per_row.view(task.shape[0], -1).mean(1))
        feat = torch.stack(terms).mean(0)
        w = (task / (feat + _EPS)).detach()
        loss = loss + kd_feature * w * feat
        parts["kd_feature"] = float(feat.mean().detach())
    return loss.mean(), parts


def tap_key(tap: str) -> str:
    return tap.replace(".", "_")  # ModuleDict keys cannot hold dots


def _projection(c_in: int, c_out: int, ndim: int) -> nn.Module:
    conv = nn.Conv3d if ndim == 5 else nn.Conv2d
    return conv(c_in, c_out, kernel_size=1)


def make_projections(
    pairs: list[tuple[str, str]], student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]
) -> nn.ModuleDict:
    """The 1x1 projections of the pairs whose widths differ (student width -> teacher width)."""
    return nn.ModuleDict({
        tap_key(s): _projection(student_feats[s].shape[1], teacher_feats[t].shape[1], student_feats[s].dim())
        for s, t in pairs if student_feats[s].shape[1] != teacher_feats[t].shape[1]
    })

"""The supernet of a space: trained once (SnapFusion's robust training), then any candidate is
scored by evaluating its sub-network instead of a fresh proxy run.

**What the supernet holds.** One weight tensor per *(slot, signature, parameter)*: a slot is a
block's name in :func:`archsearch.model.walk` (``down.1.layer0.transformer``, ``up.0.layer2.resnet``,
...), the signature the block type and the hyperparameters that change its parameterisation
rather than its size (the ResNet variant ``plain``/``separable``, the FFN type, the temporal layer
type). Each tensor is as large as the largest block any candidate of the space puts in that slot
at proxy scale (``candidate.for_proxy`` with the proxy's width, resolution and the teacher's
text encoder), found by walking a covering set of candidates: the largest one (every
dimension at its largest option), one per option of every choice the resolution asks (with
the choices that made it asked, the rest at the largest), and 32 seeded random samples.

**Which candidates map onto it, and how** (a candidate's *sub-network*):

* block presence, counts and positions are sub-layouts: a candidate's block ``down.0.layer1.resnet``
  uses the weights of the supernet's block of the same name, so fewer ResNet layers or
  transformer layers (``resnet_blocks``, ``transformer_depth``, ``layers:`` positions set to
  ``skip``) use the first ones of each stage (first-k, by position within the stage);
* the attention type is a sub-layout of the transformer: ``cross`` has the cross-attention and FFN
  of ``self_cross`` (no self-attention), ``none`` has no transformer;
* widths are sliced **Once-for-All style** (one supernet, no supernet per width setting): channels,
  FFN and ResNet hidden widths, heads and head sizes take the first rows/columns of the
  supernet's tensors; MQA takes the first K/V head of the MHA projections; QK RMSNorm uses the
  first entries of its weight (left out when off). Concatenated inputs are sliced per part (an
  up ResNet's input = the previous output ‖ the skip connection; GEGLU's value ‖ gate; the time
  embedding's cos ‖ sin features);
* the ResNet variant, FFN type and temporal layer type are separate weights per slot (a choice
  block, as in single-path one-shot NAS).

A candidate with a block the covering set never put in its slot (a combination of a rare
count and type) cannot be scored: :class:`SupernetError`, one line naming the candidate, the
block and ``proxy.kind: per_trial`` as the way out.

**Robust training.** Through the one training loop (:func:`~archsearch.distill.train_loop`)
against the same teacher, data and held-out batch as proxy runs: step ``k`` trains one
sub-network drawn from ``(seed, k)`` -- the largest candidate on every fourth step, else a
candidate sampled uniformly per dimension, so each optional transformer and ResNet block of
the largest layout is stochastically skipped (SnapFusion), widths drawn the same way -- on
step ``k``'s batch, with the task loss and the output KD (no feature KD: tap widths differ
between sub-networks), AdamW at ``proxy.lr``, constant rate, ``proxy.supernet_steps`` steps
(default ``10 * proxy.steps``).

**Cache and resume.** ``<cache>/supernets/<key>/`` (``<cache>``: ``$ARCHSEARCH_CACHE_DIR`` or
``~/.cache/archsearch``), ``key`` = hash of the space's architecture part, the proxy settings,
the teacher's fingerprint and the code version; ``supernet.safetensors`` + ``supernet.json``
(written last: the entry is complete). While it trains a checkpoint (weights, AdamW state,
the step) is written every ``checkpoint_every`` steps into a temp folder renamed into place,
then ``latest`` names it; a ``kill -9`` at any moment, then the same call again, continues from
the last checkpoint and ends with the weights an uninterrupted run gives (the sub-network and
batch of step ``k`` depend on ``k`` alone).

**Scores.** :meth:`Supernet.score` is the proxy runs' held-out score: the output-KD MSE against
the teacher on the same fixed held-out batch (:func:`~archsearch.distill.distill`), evaluated
without any training: deterministic for a given supernet.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from archsearch._util import atomic_write_text, cache_root, file_lock, short_hash
from archsearch.candidate import LargestChooser
from archsearch.data import autocast, resolve_device, seeded, step_seed, torch_threads
from archsearch.distill._config import ProxyConfig
from archsearch.distill._loop import LoopCallback, LoopOptions, Progress, TrialFailed, make_optimizer, train_loop
from archsearch.distill._student import proxy_scale, score_holdout
from archsearch.errors import ArchsearchError

if TYPE_CHECKING:
    from archsearch.distill._loop import StepState

__all__ = ["SUPERNET_VERSION", "Supernet", "SupernetError", "SupernetPlan", "check_supernet", "load_supernet",
           "plan_supernet", "supernet_key"]

#: bump when the supernet's layout or training recipe changes: invalidates cached supernets
#: (2: one "largest candidate" ranking, archsearch.candidate.HEAVIER; a space offering e.g.
#: {self, cross} or [skip, attn1d] had its supernet trained around another largest candidate)
SUPERNET_VERSION = 2
#: random candidates added to the covering set (besides the largest and one per option)
_COVER_SAMPLES = 32
#: step ``k`` trains the largest candidate when ``k % _LARGEST_EVERY == 0`` (sandwich rule)
_LARGEST_EVERY = 4


class SupernetError(ArchsearchError):
    """A candidate the supernet cannot score (one line: candidate, block, what to do)."""


# --------------------------------------------------------------------------- choosing candidates
# LargestChooser and largest_candidate: archsearch.candidate's, the ONE "largest candidate"
# (validate, the supernet and search.method: evolve agree on it)


def _covering(space: Any, limit: int = 2000) -> list[Any]:
    """The largest candidate; for every option of every choice the resolution asks (the names
    a chooser sees, e.g. ``down1.resnet_variant`` for a ``defaults`` entry, and choices that are
    only asked after another one, such as ``resnet_expansion`` once a ResNet is separable), a
    candidate taking it with the rest at their largest; plus seeded random samples."""
    from archsearch.candidate import resolve, sample_many

    first = LargestChooser()
    out = [resolve(space, first)]
    todo = [({}, first)]
    done: set[tuple[str, str]] = set()
    while todo and len(out) < limit:
        fixed, pick = todo.pop(0)
        for name, options in pick.options.items():
            for option in options:
                mark = (name, repr(option))
                if mark in done:
                    continue
                done.add(mark)
                if option == pick.asked.get(name) and type(option) is type(pick.asked.get(name)):
                    continue  # this candidate has it already
                more = LargestChooser({**fixed, name: option})
                try:
                    out.append(resolve(space, more))
                except ArchsearchError:  # invalid with the others at their largest
                    continue
                todo.append((more.fixed, more))
    out += sample_many(space, _COVER_SAMPLES, seed=0x5_0BE7)
    seen: dict[str, Any] = {}
    for c in out:
        seen.setdefault(c.id, c)
    return list(seen.values())


# --------------------------------------------------------------------------- blocks and slices


def _signature(spec: Any) -> str:
    hp = spec.hparams
    if spec.type == "resnet":
        return f"resnet:{hp['variant']}"
    if spec.type in ("transformer", "cross_ffn"):
        return f"{spec.type}:{hp['ffn_type']}"
    return spec.type


def _out_channels(spec: Any, current: int | None) -> int | None:
    hp = spec.hparams
    if spec.type in ("time_embed", "text_time_embed"):
        return current
    return int(hp.get("out_channels") or hp.get("channels") or current or 0)


_RESNET_IN = {
    "plain": (("block.norm1.weight", 0), ("block.norm1.bias", 0), ("block.conv1.weight", 1),
              ("block.conv_shortcut.weight", 1)),
    "separable": (("norm1.weight", 0), ("norm1.bias", 0), ("dw1.weight", 0), ("dw1.bias", 0), ("pw1.weight", 1),
                  ("shortcut.weight", 1)),
}
_GEGLU = re.compile(r"(^|\.)ff\.net\.0\.proj\.(weight|bias)$")

_SHAPES: "OrderedDict[str, dict[str, tuple[int, ...]]]" = OrderedDict()


def _param_shapes(spec: Any) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of one block (built on ``meta``; memoised by block key)."""
    from archsearch.model import build_block

    hit = _SHAPES.get(spec.key)
    if hit is None:
        block = build_block(spec, device="meta")
        if any(True for _ in block.buffers()):
            raise SupernetError(f"block type {spec.type!r} holds buffers; the supernet covers parameter-only blocks")
        hit = {n: tuple(p.shape) for n, p in block.named_parameters()}
        _SHAPES[spec.key] = hit
        if len(_SHAPES) > 4096:
            _SHAPES.popitem(last=False)
    return hit


def _segments(spec: Any, shapes: dict[str, tuple[int, ...]], main: int | None) -> dict[str, dict[int, tuple[int, ...]]]:
    """Dimensions that concatenate parts: ``{param: {dim: (part sizes)}}`` (see the module docstring)."""
    hp = spec.hparams
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    if spec.type == "resnet" and spec.pop_skip is not None and main is not None:
        parts = (int(main), int(hp["in_channels"]) - int(main))
        for name, dim in _RESNET_IN.get(hp["variant"], ()):
            if name in shapes:
                out[name] = {dim: parts}
    elif spec.type == "time_embed":
        c = int(hp["in_channels"])
        out["embedding.linear_1.weight"] = {1: (c // 2, c - c // 2)}
    if spec.type in ("transformer", "cross_ffn") and hp.get("ffn_type") == "geglu":
        for name, shape in shapes.items():
            if _GEGLU.search(name):
                out[name] = {0: (shape[0] // 2, shape[0] - shape[0] // 2)}
    return out


@dataclass(frozen=True)
class _Entry:
    """One block of a walked candidate, as the supernet sees it."""

    index: int
    slot: str
    signature: str
    spec: Any
    shapes: dict[str, tuple[int, ...]]
    segments: dict[str, dict[int, tuple[int, ...]]]

    @property
    def group(self) -> str:
        return f"{self.slot}|{self.signature}"


def _entries(small: Any) -> list[_Entry]:
    from archsearch.model import walk

    out = []
    current: int | None = None
    for i, spec in enumerate(walk(small)):
        shapes = _param_shapes(spec)
        out.append(_Entry(i, spec.name, _signature(spec), spec, shapes, _segments(spec, shapes, current)))
        current = _out_channels(spec, current)
    return out


def _merge_hparams(hps: list[dict[str, Any]]) -> dict[str, Any]:
    """The hyperparameters of a block as large as every one of ``hps`` (see the docstring)."""
    keys: list[str] = []
    for h in hps:
        keys += [k for k in h if k not in keys]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [h[k] for h in hps if k in h]
        if all(isinstance(v, bool) for v in vals):
            out[k] = any(vals)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = max(vals)
        elif k == "attention":
            parts: set[str] = set()
            for v in vals:
                parts |= {"self", "cross"} if v == "self_cross" else {v}
            parts.discard("none")
            out[k] = "self_cross" if {"self", "cross"} <= parts else (next(iter(parts)) if parts else "none")
        elif k == "variant" and set(vals) <= {"mha", "mqa"}:
            out[k] = "mha" if "mha" in vals else "mqa"
        else:
            out[k] = vals[0]
    return out


@dataclass
class SupernetPlan:
    """The supernet's tensors: ``shapes[key]``, ``segments[key]`` (``key`` = ``slot|signature|param``)
    and, per block group, the merged hyperparameters that initialise it."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    segments: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)
    groups: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # group -> (type, hparams)
    largest: Any = None  # the largest candidate at proxy scale

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes.values()))

    def fingerprint(self) -> str:
        return short_hash({k: list(v) for k, v in sorted(self.shapes.items())})


def plan_supernet(space: Any, proxy: ProxyConfig, teacher: Any) -> SupernetPlan:
    """Walk the covering candidates of ``space`` at proxy scale and size every tensor."""
    covering = [proxy_scale(c, teacher, proxy) for c in _covering(space)]
    plan = SupernetPlan(largest=covering[0])
    members: dict[str, list[_Entry]] = {}
    for small in covering:
        for e in _entries(small):
            members.setdefault(e.group, []).append(e)
    for group, es in members.items():
        hps = [dict(e.spec.hparams) for e in es]
        merged = _merge_hparams(hps)
        for e in es:
            for name, shape in e.shapes.items():
                key = f"{group}|{name}"
                seg = e.segments.get(name, {})
                old = plan.shapes.get(key)
                old_seg = plan.segments.get(key, {})
                new_seg: dict[int, tuple[int, ...]] = {}
                for d in set(seg) | set(old_seg):
                    a = seg.get(d, (shape[d], 0))
                    b = old_seg.get(d, (old[d], 0) if old is not None else (0, 0))
                    new_seg[d] = tuple(max(x, y) for x, y in zip(a, b))
                dims = [max(s, o) for s, o in zip(shape, old if old is not None else shape)]
                for d, parts in new_seg.items():
                    dims[d] = sum(parts)
                plan.shapes[key] = tuple(dims)
                if new_seg:
                    plan.segments[key] = new_seg
        if es[0].spec.type == "resnet":  # an input made of parts: as wide as the widest of each
            key = f"{group}|" + _RESNET_IN.get(merged.get("variant"), (("", 0),))[0][0]
            if key in plan.segments:
                merged["in_channels"] = sum(plan.segments[key][0])
        plan.groups[group] = (es[0].spec.type, merged)
    return plan


def check_supernet(space: Any, proxy: ProxyConfig, samples: int = 64) -> SupernetPlan:
    """Check, without a teacher or any weights, that the supernet covers ``space``: plan it (on
    the candidates' own text widths) and map ``samples`` seeded random candidates onto it.
    Raises :class:`SupernetError` (one line) for the first candidate it cannot score."""
    from types import SimpleNamespace

    from archsearch.candidate import sample_many

    stand_in = SimpleNamespace(kind=space.kind, context_dim=None, context_length=None, latent_channels=None,
                               fingerprint="check")
    plan = plan_supernet(space, proxy, stand_in)
    net = Supernet(plan, stand_in, proxy, device="meta")
    for cand in sample_many(space, samples, seed=0xC0_4E5):
        net.subnet(proxy_scale(cand, stand_in, proxy))
    return plan


def _slicer(sub_shape: tuple[int, ...], sub_seg: dict[int, tuple[int, ...]], pool_shape: tuple[int, ...],
            pool_seg: dict[int, tuple[int, ...]]) -> tuple[tuple[slice, ...], list[tuple[int, torch.Tensor]]] | None:
    """How to cut a sub-network tensor out of the supernet's: prefix slices, plus index lists for
    the dimensions made of parts. ``None`` when it does not fit."""
    if len(sub_shape) != len(pool_shape):
        return None
    slices: list[slice] = []
    index: list[tuple[int, torch.Tensor]] = []
    for d, (s, p) in enumerate(zip(sub_shape, pool_shape)):
        if d in pool_seg:
            parts = sub_seg.get(d, (s,) + (0,) * (len(pool_seg[d]) - 1))
            if len(parts) != len(pool_seg[d]) or any(a > b for a, b in zip(parts, pool_seg[d])):
                return None
            if tuple(parts) == tuple(pool_seg[d]):
                slices.append(slice(None))
                continue
            offs, idx = 0, []
            for a, b in zip(parts, pool_seg[d]):
                idx.append(torch.arange(offs, offs + a))
                offs += b
            slices.append(slice(None))
            index.append((d, torch.cat(idx)))
        else:
            if s > p:
                return None
            slices.append(slice(None) if s == p else slice(0, s))
    return tuple(slices), index


@dataclass
class _SubNet:
    """A candidate's network on ``meta`` and where each of its tensors comes from."""

    candidate: Any
    model: nn.Module
    sources: list[tuple[str, int, tuple[slice, ...], list[tuple[int, torch.Tensor]]]]


_META_BLOCKS: dict[str, list[nn.Module]] = {}


def _meta_model(small: Any) -> nn.Module:
    """``small``'s :class:`~archsearch.model.ArchUNet` on ``meta``, assembled from block instances
    shared between sub-networks (the n-th block of a key in a candidate is the n-th instance of
    that key): a sub-network is run with :func:`torch.func.functional_call`, so its blocks hold no
    state, and building one costs a walk instead of constructing every module again."""
    from archsearch.model import ArchUNet, build_block, walk

    specs = walk(small)
    used: dict[str, int] = {}
    blocks = []
    for spec in specs:
        n = used.get(spec.key, 0)
        used[spec.key] = n + 1
        pool = _META_BLOCKS.setdefault(spec.key, [])
        if len(pool) <= n:
            pool.append(build_block(spec, device="meta"))
        blocks.append(pool[n])
    if len(_META_BLOCKS) > 8192:
        _META_BLOCKS.clear()
    return ArchUNet.from_blocks(small, blocks)


# --------------------------------------------------------------------------- the supernet


class Supernet(nn.Module):
    """The trained supernet of a space (see the module docstring).

    ``forward_features(candidate, xt, t, ctx)`` runs the sub-network of a proxy-scale candidate;
    :meth:`score` gives a full-scale candidate's held-out score; :meth:`extract` a standalone
    :class:`~archsearch.model.ArchUNet` with the sub-network's weights;
    :meth:`run_skipping` the largest candidate with named blocks skipped.
    """

    def __init__(self, plan: SupernetPlan, teacher: Any, proxy: ProxyConfig, key: str = "",
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.plan = plan
        self.teacher = teacher
        self.proxy = proxy
        self.key = key
        self.keys = sorted(plan.shapes)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.zeros(plan.shapes[k], device=device)) for k in self.keys])
        self._subnets: OrderedDict[str, _SubNet] = OrderedDict()
        self._holdout: dict[str, dict[str, Any]] = {}  # per device: the proxy runs' held-out batch
        self.info: dict[str, Any] = {}

    # ----------------------------------------------------------------- weights
    def initialise(self, seed: int) -> None:
        """Each block group from a block built at its merged size (seeded); leftovers as PyTorch's defaults."""
        from archsearch.model import create_block

        done: set[str] = set()
        with seeded(seed), torch.no_grad():
            for group, (type_, hp) in sorted(self.plan.groups.items()):
                try:
                    block = create_block(type_, hp)
                except Exception:  # noqa: BLE001 - a merged size the block refuses: defaults below
                    continue
                for name, p in block.named_parameters():
                    key = f"{group}|{name}"
                    if key in self.index and tuple(p.shape) == self.plan.shapes[key]:
                        self.weights[self.index[key]].copy_(p)
                        done.add(key)
            for key in self.keys:
                if key in done:
                    continue
                w = self.weights[self.index[key]]
                name = key.rsplit("|", 1)[1]
                if w.dim() >= 2:
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                elif name.endswith("weight") and "norm" in name:
                    nn.init.ones_(w)
                else:
                    nn.init.zeros_(w)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: self.weights[i].detach().contiguous().cpu() for k, i in self.index.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        if set(tensors) != set(self.keys):
            raise ArchsearchError(f"{where}: the supernet's tensors do not match this space (delete the folder "
                                  "to train it again)")
        with torch.no_grad():
            for k, i in self.index.items():
                if tuple(tensors[k].shape) != tuple(self.weights[i].shape):
                    raise ArchsearchError(f"{where}: tensor {k} is {tuple(tensors[k].shape)}, expected "
                                          f"{tuple(self.weights[i].shape)} (delete the folder to train it again)")
                self.weights[i].copy_(tensors[k])

    # ----------------------------------------------------------------- sub-networks
    def subnet(self, small: Any) -> _SubNet:
        """The sub-network of a proxy-scale candidate (memoised). Raises :class:`SupernetError`."""
        hit = self._subnets.get(small.id)
        if hit is not None:
            self._subnets.move_to_end(small.id)
            return hit
        model = _meta_model(small)
        sources = []
        for e in _entries(small):
            for name, shape in e.shapes.items():
                key = f"{e.group}|{name}"
                i = self.index.get(key)
                cut = None
                if i is not None:
                    cut = _slicer(shape, e.segments.get(name, {}), self.plan.shapes[key], self.plan.segments.get(key, {}))
                if cut is None:
                    origin = getattr(small, "origin", "") or "the space"
                    raise SupernetError(
                        f"proxy.kind: supernet cannot score candidate {small.id}: block {e.slot} ({e.signature}, "
                        f"{name} {tuple(shape)}) has no weights in the supernet of {origin} "
                        "(allowed: candidates whose blocks are sub-layouts and slices of the space's largest; "
                        "use proxy.kind: per_trial for this space)")
                sources.append((f"blocks.{e.index}.{name}", i, cut[0], cut[1]))
        sub = _SubNet(small, model, sources)
        self._subnets[small.id] = sub
        if len(self._subnets) > 256:
            self._subnets.popitem(last=False)
        return sub

    def covers(self, candidate: Any) -> bool:
        """Whether a full-scale candidate maps onto the supernet."""
        try:
            self.subnet(proxy_scale(candidate, self.teacher, self.proxy))
        except SupernetError:
            return False
        return True

    def _tensors(self, sub: _SubNet) -> dict[str, torch.Tensor]:
        out = {}
        for name, i, slices, index in sub.sources:
            w = self.weights[i]
            if any(s != slice(None) for s in slices):
                w = w[slices]
            for d, ix in index:
                w = w.index_select(d, ix.to(w.device))
            out[name] = w
        return out

    def forward_features(self, small: Any, xt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sub-network of proxy-scale ``small`` on a batch: ``(prediction, {})``."""
        sub = self.subnet(small)
        pred = torch.func.functional_call(sub.model, self._tensors(sub), (xt, t, ctx))
        return pred, {}

    def extract(self, candidate: Any, *, proxy_scaled: bool = False) -> nn.Module:
        """A standalone :class:`~archsearch.model.ArchUNet` holding the sub-network's weights."""
        from archsearch.model import ArchUNet

        small = candidate if proxy_scaled else proxy_scale(candidate, self.teacher, self.proxy)
        sub = self.subnet(small)
        model = ArchUNet(small)
        with torch.no_grad():
            tensors = self._tensors(sub)
            for name, p in model.named_parameters():
                p.copy_(tensors[name])
        return model.eval()

    def run_skipping(self, skip: Iterable[str], xt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """The largest candidate's network (the supernet at full width) with blocks skipped.

        ``skip``: block names of the walk (``down.0.layer1.resnet``: neither run nor pushed as a
        skip connection; an up ResNet skipped does not pop one) or ``BLOCK/sub.module`` paths
        inside a block (``down.1.layer0.transformer/layers.1``: a residual transformer layer
        skipped; ``.../layers.0.attn1``: its self-attention left out). Only blocks whose output
        has the shape of their input may be skipped (ValueError otherwise). An independent
        loop over the blocks (not the sub-network machinery): what the sub-networks must equal.
        """
        from archsearch.model import ArchUNet

        skip = set(skip)
        whole = {s for s in skip if "/" not in s}
        inner: dict[str, list[str]] = {}
        for s in skip - whole:
            block, _, path = s.partition("/")
            inner.setdefault(block, []).append(path)
        big = self.plan.largest
        model = ArchUNet(big, device="meta")
        entries = _entries(big)
        known = {e.slot for e in entries}
        for name in whole | set(inner):
            if name not in known:
                raise ValueError(f"skip: {name!r} is not a block of the largest candidate")
        full = {}
        for e in entries:
            for pname in e.shapes:
                full[f"model.blocks.{e.index}.{pname}"] = self.weights[self.index[f"{e.group}|{pname}"]]
        handles = []
        for e in entries:
            for path in inner.get(e.slot, []):
                mod = model.blocks[e.index].get_submodule(path)
                zero = type(mod).__name__ == "Attention"
                handles.append(mod.register_forward_hook(
                    (lambda m, a, out: torch.zeros_like(out)) if zero else (lambda m, a, out: a[0])))
        try:
            return torch.func.functional_call(_Skipping(model, whole), full, (xt, t, ctx))
        finally:
            for h in handles:
                h.remove()

    # ----------------------------------------------------------------- scores
    def score(self, candidate: Any, *, device: str | torch.device | None = None) -> Any:
        """The held-out score of a full-scale candidate's sub-network (a :class:`DistillResult`)."""
        from archsearch.distill._distill import DistillResult, holdout_for

        t0 = time.perf_counter()
        dev = next(self.parameters()).device if device is None else resolve_device(device)
        small = proxy_scale(candidate, self.teacher, self.proxy)
        sub = self.subnet(small)
        hold = self._holdout.get(str(dev))
        if hold is None:
            hold = self._holdout[str(dev)] = holdout_for(self.teacher, self.proxy, dev)
        with torch.no_grad():
            tensors = self._tensors(sub)
        held = score_holdout(lambda xt, t, ctx: torch.func.functional_call(sub.model, tensors, (xt, t, ctx)), hold,
                             lambda: autocast(dev))
        quality = held.quality
        if not math.isfinite(quality):
            raise TrialFailed(f"supernet held-out score is {quality}")
        params = sum(math.prod(tuple(v.shape)) for v in tensors.values())
        return DistillResult(
            quality=quality, loss_curve=[], wall_time_s=time.perf_counter() - t0, steps=0, params=int(params),
            device=str(dev), metrics={"holdout_task_mse": held.task, "quality_se": held.quality_se,
                                      "proxy_candidate": small.id,
                                      "proxy_kind": "supernet", "supernet": self.key, "teacher": self.teacher.fingerprint})


class _Skipping(nn.Module):
    """The largest candidate's ArchUNet with whole blocks skipped (see :meth:`Supernet.run_skipping`)."""

    def __init__(self, model: nn.Module, skip: set[str]) -> None:
        super().__init__()
        self.model = model
        self.skip = skip

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.is_video:
            raise ValueError("run_skipping: image candidates only")
        x = sample
        timestep = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        temb = None
        stacks: list[list[torch.Tensor]] = [[] for _ in m.candidate.stages]
        for spec, block in zip(m.block_specs, m.blocks):
            if spec.type == "time_embed":
                temb = block(timestep.float(), None, None).to(x.dtype)
                continue
            if spec.type == "text_time_embed":
                temb = block(m._added_input(spec, sample.shape[0], sample, None), temb, None).to(x.dtype)
                continue
            if spec.name in self.skip:
                out = _out_channels(spec, None)
                if out != x.shape[1] or (spec.pop_skip is None and spec.type == "resnet"
                                         and spec.hparams["in_channels"] != out):
                    raise ValueError(f"skip: {spec.name} changes the shape of its input; it cannot be skipped")
                continue
            if spec.pop_skip is not None:
                x = torch.cat([x, stacks[spec.pop_skip].pop()], dim=1)
            x = block(x, temb, context)
            if spec.push_skip is not None:
                stacks[spec.push_skip].append(x)
        return x


# --------------------------------------------------------------------------- training and the cache


def supernet_key(space: Any, proxy: ProxyConfig, teacher: Any) -> str:
    """What defines a trained supernet: the space's architecture, the proxy settings, the teacher."""
    settings = {k: v for k, v in proxy.to_dict().items() if k != "kind"}
    settings["supernet_steps"] = proxy.supernet_training_steps
    return short_hash({"version": SUPERNET_VERSION, "space": space.hash, "proxy": settings,
                       "teacher": teacher.fingerprint}, 16)


class _Steps:
    """Step ``k``'s batch, and the sub-network step ``k`` trains (``current``), from ``(seed, k)``."""

    def __init__(self, inner: Any, supernet: Supernet, space: Any) -> None:
        self.inner = inner
        self.supernet = supernet
        self.space = space
        self.current: Any = supernet.plan.largest

    @property
    def has_teacher(self) -> bool:
        return self.inner.has_teacher

    @property
    def batch(self) -> int:
        return self.inner.batch

    @property
    def world(self) -> int:
        return getattr(self.inner, "world", 1)

    def candidate(self, step: int) -> Any:
        from archsearch.candidate import RandomChooser, resolve

        net = self.supernet
        if step % _LARGEST_EVERY == 0:
            return net.plan.largest
        rng = random.Random(step_seed(net.proxy.seed, step) ^ 0x5A9E)
        small = proxy_scale(resolve(self.space, RandomChooser(rng)), net.teacher, net.proxy)
        try:
            net.subnet(small)
        except SupernetError:  # a combination the covering set missed: train the largest instead
            return net.plan.largest
        return small

    def __call__(self, step: int) -> Any:
        self.current = self.candidate(step)
        return self.inner(step)


class _Checkpoints(LoopCallback):
    """Every ``every`` steps: weights, AdamW state and the step, into a folder renamed into place."""

    def __init__(self, folder: Path, net: Supernet, opt: torch.optim.Optimizer, every: int) -> None:
        self.folder, self.net, self.opt, self.every = folder, net, opt, max(1, int(every))

    def on_step(self, state: StepState) -> None:
        if state.step % self.every == 0 and state.step < state.steps:
            save_checkpoint(self.folder, self.net, self.opt, state.step)


def save_checkpoint(folder: Path, net: Supernet, opt: torch.optim.Optimizer, step: int) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    try:
        save_file(net.state_tensors(), str(tmp / "weights.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        atomic_write_text(tmp / "state.json", json.dumps({"step": step, "key": net.key}))
        if (folder / name).exists():
            shutil.rmtree(folder / name)
        os.replace(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / "latest", name)
    for old in folder.glob("ckpt-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder / name


def _resume(folder: Path, net: Supernet, opt: torch.optim.Optimizer) -> int:
    """Load the last checkpoint of ``folder``; returns its step (0: none or unreadable)."""
    from safetensors.torch import load_file

    latest = folder / "latest"
    if not latest.is_file():
        return 0
    ck = folder / latest.read_text().strip()
    try:
        state = json.loads((ck / "state.json").read_text())
        if state.get("key") != net.key:
            return 0
        net.load_tensors(load_file(str(ck / "weights.safetensors")), str(ck))
        opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True, map_location="cpu"))
        return int(state["step"])
    except (OSError, ValueError, KeyError, RuntimeError, ArchsearchError):
        return 0


def load_supernet(
    space: Any,
    proxy: ProxyConfig,
    teacher: Any,
    *,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    progress: Progress | None = None,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> Supernet:
    """The trained supernet of ``space`` for these proxy settings and teacher: from the cache,
    else trained now (resuming a killed training) and cached. ``progress(phase='supernet', ...)``
    follows the training. ``checkpoint_every``: steps between checkpoints (default: a tenth)."""
    from safetensors.torch import load_file, save_file

    dev = resolve_device(device)
    key = supernet_key(space, proxy, teacher)
    root = (Path(cache_dir).expanduser() if cache_dir is not None else cache_root()) / "supernets"
    folder = root / key
    plan = plan_supernet(space, proxy, teacher)
    net = Supernet(plan, teacher, proxy, key, dev)

    def load() -> bool:
        meta = folder / "supernet.json"
        if not meta.is_file():
            return False
        try:
            info = json.loads(meta.read_text())
            net.load_tensors(load_file(str(folder / "supernet.safetensors"), device=str(dev)), str(folder))
        except (OSError, ValueError, ArchsearchError):
            return False
        net.info = {**info, "path": str(folder), "trained_now": False}
        return True

    if load():
        return net.eval().requires_grad_(False)
    with file_lock(root / f".{key}.lock"), torch_threads(threads):  # another process may be training it
        if load():
            return net.eval().requires_grad_(False)
        steps = proxy.supernet_training_steps
        config = dataclasses.replace(proxy, steps=steps, kd_feature=0.0)
        net.initialise(proxy.seed)
        teacher.to(dev)
        from archsearch.distill._distill import training_batches

        batches = _Steps(training_batches(teacher, proxy, dev, progress), net, space)
        opt, _ = make_optimizer([p for p in net.parameters()], config)
        start = _resume(folder / "training", net, opt)
        every = checkpoint_every or max(1, steps // 10)
        cb = _Checkpoints(folder / "training", net, opt, every)
        with seeded(proxy.seed, dev):
            options = LoopOptions(optimizer=opt, start_step=start, callbacks=[cb],
                                  forward=lambda xt, t, ctx: net.forward_features(batches.current, xt, t, ctx))
            log = train_loop(net, batches, config, device=dev, options=options, progress=progress, phase="supernet",
                             label=f"supernet {key[:8]} ")
        tail = log.loss_curve[-50:]
        info = {"key": key, "steps": steps, "resumed_from": start, "train_s": log.train_s,
                "final_loss": float(sum(tail) / len(tail)) if tail else None, "params": plan.n_params,
                "plan": plan.fingerprint(), "teacher": teacher.fingerprint, "space": space.hash}
        save_file(net.state_tensors(), str(_tmp_name(folder, "supernet.safetensors")))
        os.replace(_tmp_name(folder, "supernet.safetensors"), folder / "supernet.safetensors")
        atomic_write_text(folder / "supernet.json", json.dumps(info, indent=1))
        shutil.rmtree(folder / "training", ignore_errors=True)
        net.info = {**info, "path": str(folder), "trained_now": True}
    return net.eval().requires_grad_(False)


def _tmp_name(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{name}.{os.getpid()}.tmp"

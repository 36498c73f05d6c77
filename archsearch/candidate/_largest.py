"""The largest candidate of a space: ONE meaning of "largest" for every stage that needs it.

``validate`` costs it block by block before a run (a space whose largest block cannot fit is
refused up front), the supernet is sized and trained around it (SnapFusion's sandwich rule),
and ``search.method: evolve`` starts from it. They all resolve the space with
:class:`LargestChooser`, so they mean the same architecture.
"""

from __future__ import annotations

from typing import Any

from archsearch.candidate._candidate import Candidate, resolve
from archsearch.spec import SearchSpace

__all__ = ["HEAVIER", "LargestChooser", "largest_candidate"]

#: The named options of a choice, lightest block first. An option ranks by the compute its
#: block adds to a candidate at full size -- FLOPs (what latency and activation memory follow),
#: then parameters -- measured with :func:`archsearch.cost.flops` / :func:`~archsearch.cost.count_params`
#: on the shipped spaces and on a one-position layout probe at widths 32 to 320:
#:
#: * nothing built ranks lowest: ``skip`` (a ``layers:`` position left empty), ``none``;
#: * ``separable`` < ``plain`` ResNets; ``mqa`` < ``mha``; ``gelu`` < ``geglu`` FFNs;
#: * attention ``cross`` < ``self`` < ``self_cross`` (self-attention attends over the H*W
#:   pixels, cross-attention over the text tokens: 45% more FLOPs for ``self`` on unet_mobile);
#: * temporal layers ``conv1d`` < ``attn1d`` < ``cross1d`` < ``conv3d`` < ``attn3d`` < ``cross3d``
#:   (a 3x3x3 convolution costs more than attention over the frames of each pixel, attention
#:   over all T*H*W tokens the most); ``after_resnet`` < ``after_transformer`` (the same
#:   layers: the later placement, what every earlier "largest" took);
#: * ``layers:`` positions: a temporal layer < ``cross_ffn`` < ``resnet`` < ``transformer``. A
#:   spatial block ranks above every temporal layer, the one exception to the FLOPs order (a 3D
#:   temporal layer costs more than a ResNet): a position rarely offers both, and both earlier
#:   rankings had it so.
#:
#: Parameters and FLOPs disagree in a few places, and there FLOPs win: ``conv3d`` has more
#: parameters than ``attn3d`` (27 C^2 weights against about 4 C^2) and than ``cross3d`` in
#: stages wider than about 48 channels, ``cross`` slightly more than ``self`` where the text is
#: wider than the stage, and ``cross_ffn`` more than ``resnet`` in narrow stages.
#:
#: Numbers (and booleans) rank above every name, the highest first; a name not listed here
#: ranks lowest.
HEAVIER: dict[str, int] = {name: rank for rank, name in enumerate((
    "skip", "none",
    "separable", "plain", "mqa", "mha", "gelu", "geglu",
    "cross", "self", "self_cross",
    "conv1d", "attn1d", "cross1d", "conv3d", "attn3d", "cross3d",
    "after_resnet", "after_transformer",
    "cross_ffn", "resnet", "transformer",
))}


def _heavier(option: Any) -> tuple[int, float]:
    """The sort key of an option: larger builds a larger block (see :data:`HEAVIER`)."""
    if isinstance(option, (bool, int, float)):
        return (1, float(option))
    return (0, float(HEAVIER.get(option, -1)))


_MISSING = object()


class LargestChooser:
    """A chooser taking ``fixed[name]`` where given (and one of the options), else the largest
    option: the highest number, ``true``, and for names the order of :data:`HEAVIER`.

    It records what it was asked: ``asked[name]`` (the value taken), ``options[name]`` (every
    option of a categorical; an integer range's values, or ``[low, high]`` past 16 of them) and
    ``ranges[name]`` (``(low, high, step)`` of each integer range).
    """

    def __init__(self, fixed: dict[str, Any] | None = None) -> None:
        self.fixed = dict(fixed or {})
        self.asked: dict[str, Any] = {}
        self.options: dict[str, list[Any]] = {}
        self.ranges: dict[str, tuple[int, int, int]] = {}

    def categorical(self, name: str, options: list[Any]) -> Any:
        want = self.fixed.get(name, _MISSING)
        value = want if any(want == o and type(want) is type(o) for o in options) else max(options, key=_heavier)
        self.asked[name] = value
        self.options[name] = list(options)
        return value

    def integer(self, name: str, low: int, high: int, step: int) -> int:
        want = self.fixed.get(name)
        if isinstance(want, int) and not isinstance(want, bool) and low <= want <= high and (want - low) % step == 0:
            value = want
        else:
            value = low + (high - low) // step * step
        self.asked[name] = value
        n = (high - low) // step + 1
        self.options[name] = [low, high] if n > 16 else list(range(low, high + 1, step))
        self.ranges[name] = (low, high, step)
        return value


def largest_candidate(space: SearchSpace) -> Candidate:
    """The space's largest candidate: every dimension at its largest option (full scale)."""
    return resolve(space, LargestChooser())

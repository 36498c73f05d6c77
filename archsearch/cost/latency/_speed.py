"""Is this machine as fast as the one that measured a table? Its sentinel block, timed again.

A fingerprint (:mod:`._fingerprint`) names the CPU, but two virtual machines with the same CPU
string can run the same block at different speeds (another host, another clock, a neighbour on
the same cores). Measured on this machine kind: the shipped ``unet_mobile-cpu-r16.csv`` (AMD
EPYC) timed its sentinel block at 5.39 ms; on another AMD EPYC VM with the same fingerprint it
took 3.9-4.2 ms, and the table predicted whole models 1.15-1.26x their time while the profile's
own whole-model timer and ``torch.utils.benchmark`` agreed within 1.5% there. So the one cheap
honest check is to time what the table timed: every measured table records its sentinel block
and that block's baseline (``sentinel: {block, baseline_ms}``); :func:`check_table_speed`
builds the block, times it with the table's own settings (a few tenths of a second) and says
how far this machine is from the table's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["SPEED_TOLERANCE", "SpeedCheck", "check_table_speed", "parse_block_key"]

#: how far the sentinel's time may move before a run says the machine is another one (the
#: sentinel's own drift rule during a profile is 0.25; between machines 0.15 is already a
#: 15% error on every prediction)
SPEED_TOLERANCE = 0.15

_KEY = re.compile(r"^(?P<type>[a-z0-9_]+)\((?P<args>.*)\)@(?P<shape>\d+(?:x\d+)*)$")


def parse_block_key(key: str) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    """``type(k=v,...)@AxBxC`` (a :attr:`~archsearch.model.BlockSpec.key`) back into its type,
    hyperparameters (ints and floats parsed, the rest kept as strings) and input shape."""
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"not a block key: {key!r}")
    params: dict[str, Any] = {}
    for part in filter(None, m["args"].split(",")):
        name, _, raw = part.partition("=")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        params[name] = value
    return m["type"], params, tuple(int(x) for x in m["shape"].split("x"))


@dataclass(frozen=True)
class SpeedCheck:
    """The table's sentinel block timed here against its baseline."""

    table: str
    block: str
    baseline_ms: float
    now_ms: float

    @property
    def ratio(self) -> float:
        """Time here over time there (< 1: this machine is faster)."""
        return self.now_ms / self.baseline_ms

    @property
    def differs(self) -> bool:
        return abs(self.ratio - 1.0) > SPEED_TOLERANCE

    @property
    def warning(self) -> str | None:
        """One line when this machine runs the sentinel more than :data:`SPEED_TOLERANCE` apart."""
        if not self.differs:
            return None
        way = "faster" if self.ratio < 1 else "slower"
        return (f"{self.table}: its sentinel block takes {self.now_ms:.2f} ms here against {self.baseline_ms:.2f} ms "
                f"when the table was measured ({self.ratio:.2f}x): this machine is {way}, so its latencies are off "
                f"by about that much — run archsearch profile --recalibrate {self.table} -n 8")


def check_table_speed(table: Any, *, repeats: int = 5) -> SpeedCheck | None:
    """Time ``table``'s sentinel block here (median of ``repeats`` timings with the table's own
    measure settings and threads). ``None`` when the table has no sentinel baseline or was not
    measured with torch on this CPU (estimated, imported, CUDA, MPS, Core ML, ExecuTorch tables:
    their device is elsewhere or needs its own runtime)."""
    meta = table.meta
    sentinel = meta.get("sentinel") or {}
    key, baseline = sentinel.get("block"), sentinel.get("baseline_ms")
    if str(meta.get("target") or "cpu") != "cpu" or not key or not baseline:
        return None
    import statistics

    from archsearch.cost.latency._measure import MeasureSettings, time_module
    from archsearch.model import BlockSpec, build_block, example_inputs

    try:
        type_, params, shape = parse_block_key(str(key))
    except ValueError:
        return None
    spec = BlockSpec(name="sentinel", type=type_, params=tuple(params.items()), in_shape=shape, stage="sentinel")
    measure = {k: v for k, v in (meta.get("measure") or {}).items() if k in MeasureSettings.__dataclass_fields__}
    settings = MeasureSettings(**measure)
    block = build_block(spec).eval()
    inputs = example_inputs(spec)
    threads = int(meta.get("threads") or 1)
    times = [time_module(block, inputs, threads, settings).ms for _ in range(max(1, repeats))]
    name = str(table.path) if table.path is not None else "the latency table"
    return SpeedCheck(name, str(key), float(baseline), float(statistics.median(times)))

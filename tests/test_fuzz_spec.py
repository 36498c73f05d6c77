"""Fuzzing the spec loader: a few hundred mutants of the shipped spaces (wrong types, huge
numbers, deleted and renamed keys, hostile YAML) through the validation every command makes
first. Each must give "ok" or one line naming the file -- never another exception, never more
than a bounded amount of memory -- and no tag may ever execute. How long each takes is a figure
``benchmarks/bench_refusal.py`` prints, not an assertion here."""

from __future__ import annotations

import copy
import random
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from archsearch.cli.main import app
from archsearch.errors import ArchsearchError, SpecError
from archsearch.spec import LIMITS, load_space_text
from tests.conftest import ROOT, SPACES

SEED = 20240613
N_MUTANTS = 300
#: per mutant: Python heap
MAX_HEAP_BYTES = 64 << 20
#: the Python heap of every third mutant is traced
TRACE_EVERY = 3
SOURCE = "fuzz.yaml"

SHIPPED = sorted(SPACES.rglob("*.yaml"))

WRONG_TYPES: list[Any] = ["abc", "", [], [1, 2], {}, {"a": 1}, None, True, False, 3.5, -1, 0,
                          {"choice": []}, {"choice": [1, [2]]}, {"range": [1]}, {"range": ["a", "b"]},
                          {"range": [5, 1]}, {"choice": "x"}, {"choice": [1], "range": [1, 2]}, "1e9", "none"]
HUGE: list[Any] = [10 ** 5, 10 ** 9, 10 ** 18, 10 ** 100, -(10 ** 9), 1.0e9, 1.0e300, float("inf"), float("nan"),
                   {"range": [1, 100_000_000]}, {"range": [1, 10 ** 12, 1]}, {"range": [0.0, 1.0, 1.0e-9]},
                   {"choice": list(range(5000))}]
HOSTILE = [
    "!!python/object/apply:os.system ['touch {canary}']",
    "!!python/object/new:os.system ['touch {canary}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!binary aGVsbG8=",
    "!!timestamp 2001-12-14",
    "!!set {{a, b}}",
    "!!omap [a: 1]",
    "!custom 3",
    "&x [*x]",
]
KNOWN_KEYS = ["channels", "resnet_blocks", "attention", "head_dim", "heads", "transformer_depth", "ffn_ratio",
              "context_dim", "context_length", "resolution", "frames", "stages", "mid", "up", "layers",
              "temporal", "count", "type", "kind", "norm_groups", "width_mult", "format", "id"]


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every key path of a document (mappings and lists)."""
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, path + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _mutate(rng: random.Random, data: dict, canary: Path) -> str:
    """One mutant of a parsed space, as YAML text (some mutations only exist as text)."""
    doc = copy.deepcopy(data)
    paths = [p for p in _paths(doc) if p]
    op = rng.choice(["type", "type", "huge", "huge", "delete", "rename", "hostile", "search", "deep", "text"])
    path = rng.choice(paths)
    if op == "type":
        _set(doc, path, copy.deepcopy(rng.choice(WRONG_TYPES)))
    elif op == "huge":
        numeric = [p for p in paths if isinstance(_get(doc, p), (int, float)) and not isinstance(_get(doc, p), bool)]
        _set(doc, rng.choice(numeric or paths), copy.deepcopy(rng.choice(HUGE)))
    elif op == "delete":
        mapping_paths = [p for p in paths if isinstance(_get(doc, p[:-1]), dict)]
        p = rng.choice(mapping_paths)
        del _get(doc, p[:-1])[p[-1]]
    elif op == "rename":
        mapping_paths = [p for p in paths if isinstance(_get(doc, p[:-1]), dict)]
        p = rng.choice(mapping_paths)
        parent = _get(doc, p[:-1])
        new = rng.choice([f"{p[-1]}_x", str(p[-1]).upper(), rng.choice(KNOWN_KEYS), 7, None])
        parent[new] = parent.pop(p[-1])
    elif op == "search":  # a dimension turned into a choice or a (possibly long) range
        numeric = [p for p in paths if isinstance(_get(doc, p), int) and not isinstance(_get(doc, p), bool)]
        if numeric:
            p = rng.choice(numeric)
            v = _get(doc, p)
            _set(doc, p, rng.choice([{"choice": [v, v * 2, v * 4]}, {"range": [v, v * rng.choice([2, 64, 10 ** 6])]},
                                     {"range": [max(1, v // 2), v * 2, max(1, v // 4)]}]))
    text = yaml.safe_dump(doc, sort_keys=False)
    if op == "hostile":
        tag = rng.choice(HOSTILE).format(canary=canary)
        key = rng.choice(["name", "channels", "resolution", "x"])
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        indent = len(lines[i]) - len(lines[i].lstrip())
        lines.insert(i + 1, " " * indent + f"{key}: {tag}")
        text = "\n".join(lines) + "\n"
    elif op == "deep":
        depth = rng.choice([40, 500, 5000])
        text += "description: " + "[" * depth + "]" * depth + "\n"
    elif op == "text":
        bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]\n" for k in range(1, 9))
        text = rng.choice([
            text[: rng.randrange(1, len(text))],                      # cut anywhere
            text.replace(": ", ":", 1),                               # broken syntax
            "schema_version: 1\n" + bomb,                             # a billion laughs
            text + "context_dim: " + "9" * 5000 + "\n",               # a 5000-digit integer
            text + "\tname: tab\n",
            text.replace("channels:", "channels: 1e9 #", 1),          # 1e9 is text to YAML 1.1
            "\x00\xff" + text,
            "- just\n- a\n- list\n",
            "",
        ])
    return text


def _validate(text: str) -> tuple[str, str]:
    """What `archsearch validate` does before printing: load the space, check its sections."""
    from archsearch.search import check_space

    try:
        space = load_space_text(text, SOURCE)
    except SpecError as exc:
        return "spec", str(exc)
    try:
        check_space(space)
    except ArchsearchError as exc:
        return "check", str(exc)
    return "ok", ""


def _mutants(tmp_path: Path) -> list[str]:
    rng = random.Random(SEED)
    docs = [yaml.safe_load(p.read_text()) for p in SHIPPED]
    return [_mutate(rng, rng.choice(docs), tmp_path / "PWNED") for _ in range(N_MUTANTS)]


@pytest.mark.slow
def test_mutated_specs_give_ok_or_one_line_in_bounded_memory(tmp_path):
    for path in SHIPPED:  # every shipped space validates
        assert _validate(path.read_text())[0] in ("ok", "check"), path  # the architecture always loads
    mutants = _mutants(tmp_path)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: dict[str, int] = {}
    for i, text in enumerate(mutants):
        traced = i % TRACE_EVERY == 0  # tracemalloc makes Python several times slower: a third
        if traced:
            tracemalloc.start()
        try:
            kind, msg = _validate(text)
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"mutant {i}: {type(exc).__name__}: {exc}\n--- mutant ---\n{text[:2000]}")
        finally:
            peak = tracemalloc.get_traced_memory()[1] if traced else 0
            if traced:
                tracemalloc.stop()
        outcomes[kind] = outcomes.get(kind, 0) + 1
        assert peak < MAX_HEAP_BYTES, f"mutant {i} peaked at {peak / 2**20:.0f} MiB: {msg}\n{text[:2000]}"
        if kind != "ok":
            assert msg and "\n" not in msg and "Traceback" not in msg, f"mutant {i}: {msg!r}"
        if kind == "spec":
            assert msg.startswith(SOURCE), f"mutant {i}: the error does not name the file: {msg}"
    # torch's own allocations are not traced: the process as a whole stays bounded too
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kb < 1 << 20, f"the fuzz run grew the process by {grown_kb / 2**10:.0f} MiB"
    assert not (tmp_path / "PWNED").exists(), "a YAML tag executed code"
    # the mutants exercise both outcomes and both stages
    assert outcomes.get("spec", 0) > N_MUTANTS // 3 and outcomes.get("ok", 0) > 0, outcomes


def test_fuzz_mutants_through_the_cli(tmp_path):
    """A sample of the mutants through `archsearch validate` (typer): exit 0 with "ok", or exit 2
    with one `error:` line and no traceback."""
    runner = CliRunner()
    mutants = _mutants(tmp_path)[::25]
    for i, text in enumerate(mutants):
        path = tmp_path / f"m{i}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        r = runner.invoke(app, ["validate", str(path)])
        assert r.exception is None or isinstance(r.exception, SystemExit), (i, r.exception, r.output)
        assert r.exit_code in (0, 2), (i, r.output)
        if r.exit_code == 2:
            lines = [line for line in r.output.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, (i, r.output)
    assert not (tmp_path / "PWNED").exists()


def _absurd(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    base = (SPACES / "tiny.yaml").read_text()
    cases = {
        "range": (base.replace("resnet_blocks: {range: [1, 2]}", "resnet_blocks: {range: [1, 100000000]}"),
                  ":17: stages[0].resnet_blocks.range: bad value 100000000 (allowed: an integer from 1 to 32)"),
        "float": (base.replace("channels: {choice: [16, 32]}", "channels: 1.0e+9"),
                  f":16: stages[0].channels: bad value 1000000000.0, a float (allowed: an integer from 1 to "
                  f"{LIMITS['channels']:,})"),
        "big": (base.replace("channels: {choice: [16, 32]}", "channels: 100000"),
                f":16: stages[0].channels: bad value 100000 (allowed: an integer from 1 to {LIMITS['channels']:,})"),
        "text": (base.replace("context_length: 8", "context_length: 1e9"),
                 ":8: context_length: bad value '1e9': YAML reads 1e9 as text, not a number, write it in digits "
                 "(1000000000) (allowed: an integer from 1 to 4,096)"),
        "long": (base.replace("channels: {choice: [16, 32]}", "channels: {range: [8, 8192]}"),
                 ":16: stages[0].channels.range: range [8, 8192] has 8,185 options (allowed: at most 1,024"),
    }
    out = {}
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out[name] = (path, expected)
    return out


@pytest.mark.parametrize("command", ["validate", "show", "sample", "run"])
def test_absurd_sizes_are_refused_by_every_space_command(tmp_path, command):
    """The issue's inputs: one line naming the file, the line and the key, with the bound."""
    assert _validate((SPACES / "tiny.yaml").read_text())[0] == "ok"
    runner = CliRunner()
    for name, (path, expected) in _absurd(tmp_path).items():
        r = runner.invoke(app, [command, str(path), "--reports-dir", str(tmp_path)] if command == "run"
                          else [command, str(path)])
        assert r.exit_code == 2, (name, r.output)
        assert r.output.strip() == f"error: {path}{expected}" or f"error: {path}{expected}" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.slow
def test_absurd_range_costs_a_fresh_process_no_memory(tmp_path):
    """End to end in a fresh process: `show` of the 100-million range (which used to grow past
    6.5 GB) costs no more memory than `show` of a one-character mistake: its imports."""
    path, expected = _absurd(tmp_path)["range"]
    small = tmp_path / "small.yaml"
    small.write_text((SPACES / "tiny.yaml").read_text().replace("resnet_blocks: {range: [1, 2]}", "resnet_blocks: -1"))
    script = ("import resource, sys\nfrom archsearch.cli.main import app\n"
              "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n"
              "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
              "    raise\n")
    rss = {}
    for name, spec in (("small", small), ("range", path)):
        r = subprocess.run([sys.executable, "-c", script, "show", str(spec)], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 2, (r.stdout, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, r.stderr
        rss[name] = int(next(line for line in r.stderr.splitlines() if line.startswith("maxrss_kb")).split()[1])
        if name == "range":
            assert errors == [f"error: {path}{expected}"], r.stderr
    assert rss["range"] < rss["small"] + (128 << 10), f"{rss['range'] / 2**10:.0f} MiB vs {rss['small'] / 2**10:.0f} MiB"

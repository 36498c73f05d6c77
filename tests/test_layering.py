"""The package's shape: data flows one way, and no module imports itself back.

The stage order is written once, in ``docs/design.md`` (the indented line after "Stage order"); this
test reads it from there, parses every module's imports (module level and inside functions)
with ``ast`` and fails on

* a stage importing a later stage (``archsearch.cost`` importing ``archsearch.search``),
* a shared leaf (``errors``, ``_util``, ``_resources``, ``pareto``) importing any stage,
* an import cycle between modules, even one hidden in a function-level import.

``archsearch.cli`` may import every stage; nothing imports the CLI.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "archsearch"
DESIGN = ROOT / "docs" / "design.md"
LEAVES = ("errors", "_util", "_resources", "pareto")


def stage_order() -> list[str]:
    lines = DESIGN.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("stage order"):
            body = next(x for x in lines[i + 1:] if x.startswith("    ") and "→" in x)
            return [s.strip() for s in re.split(r"→|->", body) if s.strip()]
    raise AssertionError(f"{DESIGN}: no 'Stage order' line")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """archsearch modules that ``path`` imports (``from a.b import c`` → a.b.c if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import archsearch.cost.latency._x as y` etc.
                t = t.rpartition(".")[0]
            if t.startswith("archsearch") and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, m, known) for m, p in mods.items()}


def stage_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_design_doc_names_every_stage_package():
    order = stage_order()
    assert order[:2] == ["spec", "candidate"] and order[-1] == "report"
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()} - {"cli"}
    assert packages == set(order), f"docs/design.md's stage order {order} vs packages {sorted(packages)}"
    for leaf in LEAVES:
        assert (PKG / f"{leaf}.py").is_file()


def test_no_stage_imports_a_later_stage():
    order = stage_order()
    rank = {s: i for i, s in enumerate(order)}
    bad = []
    for mod, deps in graph().items():
        src = stage_of(mod)
        for dep in deps:
            dst = stage_of(dep)
            if dst == "cli" and src != "cli":
                bad.append(f"{mod} imports {dep} (nothing imports the CLI)")
            elif src in LEAVES and dst not in (None, *LEAVES):
                bad.append(f"{mod} (a shared leaf) imports the stage {dep}")
            elif src in rank and dst in rank and rank[dst] > rank[src]:
                bad.append(f"{mod} ({src}) imports {dep} ({dst}), a later stage")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    # Tarjan's strongly connected components; a package __init__ importing its own submodules
    # is the re-export, so the edge submodule → its own package __init__ is what closes a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path):
    """The parser itself: a lazy import inside a function and a relative import both count."""
    src = tmp_path / "archsearch" / "cost" / "_x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from archsearch.search import _study\nfrom . import _y\n")
    known = {"archsearch.search", "archsearch.search._study", "archsearch.cost", "archsearch.cost._y"}
    assert imports_of(src, "archsearch.cost._x", known) == {"archsearch.search._study", "archsearch.cost._y"}


def test_no_private_module_is_imported_from_outside_its_package():
    """``archsearch.X._y`` is X's business: another package (the CLI included) imports what X
    exports from ``archsearch.X``, so X can move its insides without breaking anyone."""
    g = graph()
    bad = []
    for mod, deps in g.items():
        for dep in deps:
            parts = dep.split(".")
            private = next((i for i, p in enumerate(parts) if p.startswith("_") and i > 0), None)
            if private is None or parts[1] in LEAVES:
                continue
            owner = ".".join(parts[:private])  # the package whose private module this is
            if not (mod == owner or mod.startswith(owner + ".")):
                bad.append(f"{mod} imports {dep} (import it from {owner})")
    for mod, path in modules().items():  # private names: `from archsearch.x import _name`
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("archsearch."):
                parts = node.module.split(".")
                owner = ".".join(parts[:next((i for i, p in enumerate(parts) if p.startswith("_")), len(parts))])
                if parts[1] in LEAVES or mod == owner or mod.startswith(owner + "."):
                    continue
                bad += [f"{mod} imports the private name {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(sorted(bad))

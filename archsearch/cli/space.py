"""Commands on search spaces and candidates: show, sample, validate, build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from archsearch.cli._common import console, user_errors
from archsearch.errors import ArchsearchError

SpecArg = Annotated[Path, typer.Argument(help="Search-space YAML file, e.g. search_spaces/unet_mobile.yaml, "
                                              "or the name of a bundled space (unet_mobile, tiny, ...)")]


def _fmt_int(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _stage_table(candidate, title: str) -> Table:
    from archsearch.cost import block_params, count_params, flops
    from archsearch.model import walk

    report = flops(candidate)
    params_by_stage: dict[str, int] = {}
    blocks_by_stage: dict[str, list[str]] = {}
    for spec in walk(candidate):
        params_by_stage[spec.stage] = params_by_stage.get(spec.stage, 0) + block_params(spec)
        blocks_by_stage.setdefault(spec.stage, []).append(spec.type)
    stage_cfg = {f"down.{i}": s for i, s in enumerate(candidate.stages)}
    stage_cfg.update({f"up.{i}": s for i, s in enumerate(candidate.up)})
    if candidate.mid is not None:
        stage_cfg["mid"] = candidate.mid
    table = Table(title=title)
    for col in ("stage", "width", "blocks", "attention", "params", "FLOPs (MAC)"):
        table.add_column(col, justify="right" if col in ("width", "params", "FLOPs (MAC)") else "left")
    for stage, p in params_by_stage.items():
        st = stage_cfg.get(stage)
        kinds = blocks_by_stage[stage]
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
        attn = "-"
        if st is not None and st.has_transformer and "transformer" in kinds:
            attn = f"{st.attention} x{st.transformer_depth} {st.attention_variant} h{st.heads}"
            if st.qk_norm:
                attn += " qknorm"
        table.add_row(stage, str(st.channels) if st else "-", counts, attn, _fmt_int(p),
                      _fmt_int(report.by_stage.get(stage, 0)))
    total = count_params(candidate)
    table.add_section()
    table.add_row("total", "", f"{len(walk(candidate))} blocks", "", f"{total:,}", _fmt_int(report.total))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def validate(spec: SpecArg) -> None:
        """Check a search-space file: "ok" and its size, or the first problem on one line (exit 2).

        Every section is checked (the architecture, search:, proxy: with its teacher,
        constraints:), with the same checks a run makes before any work. What is not an error
        yet but would stop a run (no latency table for this space's name: a copied and renamed
        space) is a "warning:" line naming the table looked for, the tables of other spaces
        with the same blocks, and the fix.

        Example:

          archsearch validate search_spaces/unet_mobile.yaml
        """
        from archsearch._resources import describe, find_space
        from archsearch.search import check_space
        from archsearch.spec import load_space

        spec = find_space(spec)  # a path, or a bundled space by name
        space = load_space(spec)
        checked = check_space(space)  # search:, proxy: (teacher), constraints:, as a run checks them
        typer.echo(f"ok {describe(spec)}: space {space.name!r} ({space.kind}), "
                   f"{space.n_stages} stages, {space.size():,} candidates")
        if checked.latency_table is not None:
            typer.echo(f"latency table: {describe(checked.latency_table)}")
        for note in checked.notes:  # e.g. no latency table: a run would stop there
            typer.echo(note if note.startswith(("warning: ", "note: ")) else f"warning: {note}", err=True)

    @app.command()
    @user_errors
    def show(
        spec: SpecArg,
        samples: Annotated[int, typer.Option("--samples", "-n", help="Candidates to sample and cost.", min=0)] = 3,
        seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    ) -> None:
        """Dimensions, choices and exact size of a space, and the cost of a few samples.

        Example:

          archsearch show search_spaces/unet_mobile.yaml -n 3
        """
        from archsearch._resources import describe, find_space
        from archsearch.candidate import sample_many
        from archsearch.cost import count_params, flops
        from archsearch.spec import load_space

        spec = find_space(spec)  # a path, or a bundled space by name
        space = load_space(spec)
        console.print(f"[bold]{space.name}[/bold] ({space.kind}) from {escape(describe(spec))}: {space.n_stages} stages, "
                      f"latent {space.data.get('resolution', 64)}x{space.data.get('resolution', 64)}, "
                      f"hash {space.hash}")
        dims = Table(title="Searchable dimensions")
        dims.add_column("dimension")
        dims.add_column("options")
        dims.add_column("line", justify="right")
        for d in space.dimensions():
            dims.add_row(d.name, ", ".join(map(str, d.options)), str(d.line or ""))
        console.print(dims)
        console.print(f"space size: [bold]{space.size():,}[/bold] distinct candidates "
                      "(exact count; assignments that build the same architecture count once)")
        if samples > 0:
            table = Table(title=f"{samples} samples (seed {seed})")
            for col in ("id", "widths", "resnets", "transformer depth", "params", "FLOPs (MAC)"):
                table.add_column(col)
            from archsearch.model import check_memory

            with console.status("costing samples (fvcore)..."):
                for c in sample_many(space, samples, seed):
                    check_memory(c, whole=False)  # costing builds its blocks: refuse one that cannot fit
                    table.add_row(
                        c.id,
                        "/".join(str(s.channels) for s in c.stages),
                        "/".join(str(s.resnet_blocks) for s in c.stages),
                        "/".join(str(s.transformer_depth if s.has_transformer else 0) for s in c.stages),
                        _fmt_int(count_params(c)),
                        _fmt_int(flops(c).total),
                    )
            console.print(table)

    @app.command("sample")
    @user_errors
    def sample_cmd(
        spec: SpecArg,
        n: Annotated[int, typer.Option("-n", help="How many candidates.", min=1)] = 1,
        seed: Annotated[int, typer.Option(help="Sampling seed (same seed, same candidates).")] = 0,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Write one YAML per candidate here.")] = None,
    ) -> None:
        """Draw N distinct candidates; print them or write CANDIDATE_ID.yaml files.

        Example:

          archsearch sample search_spaces/tiny.yaml -n 4 --seed 1 -o candidates/
        """
        from archsearch._resources import find_space
        from archsearch.candidate import enumerate_candidates, sample_many
        from archsearch.spec import load_space

        space = load_space(find_space(spec))  # a path, or a bundled space by name
        size = space.size()
        if n > size:  # checked first: drawing more distinct candidates than exist never ends well
            console.print(f"[yellow]the space has only {size:,} distinct candidates: drawing all of them[/yellow]")
            n = size
        # all of a space: enumerate it (random draws would have to collect every coupon)
        cands = list(enumerate_candidates(space)) if n == size else sample_many(space, n, seed)
        if out is None:
            for c in cands:
                typer.echo(f"# candidate {c.id}\n---")
                typer.echo(c.to_yaml())
            return
        if out.exists() and not out.is_dir():
            raise ArchsearchError(f"{out}: exists and is not a folder (allowed: a folder path for -o)")
        out.mkdir(parents=True, exist_ok=True)
        for c in cands:
            c.save(out / f"{c.id}.yaml")
        console.print(f"wrote {len(cands)} candidates to {out}/")

    @app.command()
    @user_errors
    def build(
        candidate: Annotated[Path, typer.Argument(help="Candidate YAML (from `archsearch sample -o`), or a "
                                                  "space with one assignment (a reference backbone).")],
        save: Annotated[Optional[Path], typer.Option(help="Also save the initialised model here "
                                                     "(config.json + model.safetensors).")] = None,
    ) -> None:
        """Build a candidate: parameters, FLOPs and a per-stage table.

        Examples:

          archsearch build candidates/1a2b3c4d5e6f.yaml

          archsearch build search_spaces/reference/sd15_unet.yaml
        """
        from archsearch._resources import find_space
        from archsearch.candidate import load_candidate
        from archsearch.model import check_memory

        cand = load_candidate(find_space(candidate))  # a path, or a bundled space (reference/sd15_unet)
        check_memory(cand, whole=save is not None)  # before costing (blocks) or saving (the model)
        console.print(_stage_table(cand, f"candidate {cand.id} ({cand.kind}, latent {cand.resolution}px)"))
        if save is not None:
            from archsearch.model import build_model

            build_model(cand).save_pretrained(save)
            console.print(f"saved model to {save}/")

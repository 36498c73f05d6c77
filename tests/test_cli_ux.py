"""Daily use of the CLI: progress in a log (plain or JSON lines, --quiet), Ctrl-C with the way to
resume, no third-party noise, a quick start (validate / show / predict / --help import neither
diffusers nor torch's compile stack), examples in --help as written, a copied space's table."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SPACES
from typer.testing import CliRunner

from archsearch.cli.main import app

runner = CliRunner()

#: a progress line of ``--log-format text`` (what a log file gets instead of bars)
PROGRESS = re.compile(r"^(\w+) (\d+)/(\d+) \((\d+)%\), \S+ elapsed, (\?|\S+/s|\S+ each), eta \S+(: .*)?$")
#: archsearch's own stderr lines: progress, warnings, notes, errors, Ctrl-C
OWN = re.compile(r"^(\w+ \d+/\d+ \(\d+%\), |warning: |note: |error: |interrupted: |\{\"phase\": )")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def _candidate(tmp_path: Path) -> Path:
    from archsearch.candidate import sample
    from archsearch.spec import load_space

    return sample(load_space(SPACES / "tiny.yaml"), 0).save(tmp_path / "cand.yaml")


# --------------------------------------------------------------------------- progress for logs


def test_profile_writes_progress_lines_to_a_log_json_lines_and_nothing_with_quiet(tmp_path):
    cand = _candidate(tmp_path)
    args = ["profile", str(cand), "--target", "ane", "--no-convert", "--calibrate", "0"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a.csv")])  # stdout is not a terminal here
    assert r.exit_code == 0, r.output
    lines = [m for m in map(PROGRESS.match, r.output.splitlines()) if m]
    assert lines, r.output
    assert {m.group(1) for m in lines} == {"blocks"}
    last = lines[-1]
    assert last.group(2) == last.group(3) and last.group(4) == "100", r.output  # the last one is always there
    assert "━" not in r.output  # no bar drawn into the log

    r = runner.invoke(app, ["--log-format", "json", *args, "--out", str(tmp_path / "b.csv")])
    assert r.exit_code == 0, r.output
    objs = [json.loads(ln) for ln in r.output.splitlines() if ln.startswith("{")]
    assert objs and all({"phase", "done", "total", "rate", "eta"} <= set(o) for o in objs)
    assert objs[-1]["phase"] == "blocks" and objs[-1]["done"] == objs[-1]["total"] and objs[-1]["eta"] == 0

    r = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "c.csv")])
    assert r.exit_code == 0, r.output
    assert not any(PROGRESS.match(ln) for ln in r.output.splitlines()) and "{" not in r.output
    assert "wrote" in r.output  # results still print


def test_log_lines_are_rate_limited_per_phase_with_counts_rate_and_eta():
    from archsearch.cli._common import _LogLines

    class Sink:
        def __init__(self):
            self.lines: list[str] = []

        def write(self, s):
            self.lines += [ln for ln in s.splitlines() if ln]

        def flush(self):
            pass

    class Target:
        file = Sink()

    now = [0.0]
    log = _LogLines("text", 10.0, Target(), clock=lambda: now[0])
    for step in range(1001):  # 1000 quick steps: one line every 5% (and the first and last)
        now[0] = step * 0.001
        log("train", f"loss {step}", step, 1000)
    out = Target.file.lines
    assert len(out) == 21, out
    assert out[0].startswith("train 0/1000 (0%)") and out[-1].startswith("train 1000/1000 (100%)")
    assert ", 1,000/s, eta 0s: loss 1000" in out[-1], out[-1]
    Target.file.lines = []
    for trial in range(4):  # slow trials: a line for each one (time passes, 25% each)
        now[0] += 60.0
        log("trials", "t", trial, 3)
    assert [ln.split(",")[0] for ln in Target.file.lines] == ["trials 0/3 (0%)", "trials 1/3 (33%)",
                                                              "trials 2/3 (67%)", "trials 3/3 (100%)"]
    assert "1m00s each, eta 2m00s" in Target.file.lines[1], Target.file.lines[1]
    Target.file.lines = []
    js = _LogLines("json", 10.0, Target(), clock=lambda: now[0])
    js("encode", "shard 1", 0, 8)
    now[0] += 4.0
    js("encode", "shard 2", 4, 8)
    first, second = (json.loads(ln) for ln in Target.file.lines)
    assert first == {"phase": "encode", "done": 0, "total": 8, "rate": None, "eta": None, "elapsed": 0.0,
                     "message": "shard 1"}
    assert second["rate"] == 1.0 and second["eta"] == 4.0 and second["done"] == 4


def test_global_options_are_documented_and_come_before_the_command():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert r.exit_code == 0
    assert "--quiet" in r.output and "--log-format" in r.output and "text|json" in r.output
    assert "archsearch --quiet run search_spaces/tiny.yaml" in r.output
    r = runner.invoke(app, ["--quiet", "--log-format", "json", "validate", "tiny"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["--log-format", "xml", "validate", "tiny"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --log-format: bad value 'xml' (allowed: text, json)"


def test_quiet_run_draws_nothing_and_still_runs(tmp_path, monkeypatch):
    """``archsearch --quiet run``: the search's progress callback still works (it is called),
    nothing is printed for it; without --quiet a log gets one line per report."""
    import archsearch.search as search

    calls = []

    def fake_run_search(space, options, progress=None, log=None, on_trial=None):
        for done in range(3):
            progress("trials", f"{done} complete", done, 2)
            calls.append(done)
        raise KeyboardInterrupt  # stop here: what follows a search is not this test's

    monkeypatch.setattr(search, "run_search", fake_run_search)
    argv = ["run", str(SPACES / "tiny.yaml"), "--reports-dir", str(tmp_path / "r")]
    r = runner.invoke(app, ["--quiet", *argv])
    assert r.exit_code == 130 and calls == [0, 1, 2], r.output
    assert not any(PROGRESS.match(ln) for ln in r.output.splitlines()), r.output
    r = runner.invoke(app, argv)
    assert [ln.split(",")[0] for ln in r.output.splitlines() if PROGRESS.match(ln)] == [
        "trials 0/2 (0%)", "trials 1/2 (50%)", "trials 2/2 (100%)"], r.output


# --------------------------------------------------------------------------- Ctrl-C


def _interrupt(*a, **k):
    raise KeyboardInterrupt


def test_ctrl_c_names_what_stopped_and_how_to_resume_it(tmp_path, monkeypatch):
    import archsearch.cost.latency as latency
    import archsearch.data as data
    import archsearch.distill as distill
    import archsearch.search as search

    cand = _candidate(tmp_path)
    cases = [
        (data, "prepare", ["data", "prepare", str(tmp_path), "--teacher", str(tmp_path), "--out", str(tmp_path / "c")],
         "interrupted: data prepare stopped; rerun the same command to continue (finished shards are kept)"),
        (distill, "load_teacher", ["train", str(cand), "--spec", "tiny", "--out", str(tmp_path / "t")],
         "interrupted: train stopped; rerun the same command with --resume latest to continue from its last "
         "checkpoint"),
        (distill, "load_teacher", ["train", str(cand), "--spec", "tiny", "--resume", "latest"],
         "interrupted: train stopped; rerun the same command to continue from its last checkpoint"),
        (distill, "load_teacher", ["train", str(cand), "--spec", "tiny", "--checkpoint-every", "0"],
         "interrupted: train stopped; nothing to resume: --checkpoint-every 0 writes a checkpoint at the end "
         "only; rerun the same command to start again"),
        (search, "run_search", ["run", str(SPACES / "tiny.yaml"), "--reports-dir", str(tmp_path / "r")],
         "interrupted: run stopped; rerun the same command with --resume to continue (finished trials are kept)"),
        (search, "run_search", ["run", str(SPACES / "tiny.yaml"), "--resume", "--reports-dir", str(tmp_path / "r")],
         "interrupted: run stopped; rerun the same command to continue (finished trials are kept)"),
        (latency, "run_profile", ["profile", str(cand), "--target", "ane", "--no-convert", "--out",
                                  str(tmp_path / "p.csv")],
         "interrupted: profile stopped; rerun the same command to continue (the blocks measured so far are kept)"),
    ]
    for module, name, argv, line in cases:
        with monkeypatch.context() as m:
            m.setattr(module, name, _interrupt)
            r = runner.invoke(app, argv)
        assert r.exit_code == 130, (argv, r.output)
        assert r.output.strip().splitlines()[-1] == line, (argv, r.output)
        assert "Traceback" not in r.output and "Aborted" not in r.output
    from archsearch.cli._common import resume_hint

    assert resume_hint("fewstep", {"resume": None, "checkpoint_every": 500}) == (
        "interrupted: fewstep stopped; rerun the same command with --resume latest to continue from its last checkpoint")
    assert resume_hint("build", {}) == "interrupted: build stopped"


@pytest.mark.slow
def test_sigint_to_a_running_profile_exits_130_with_the_resume_line_and_keeps_its_rows(tmp_path):
    out = tmp_path / "t.csv"
    # a candidate's 13 blocks timed on this CPU (about a second each): Ctrl-C after the first
    # lands mid-table with seconds to spare, even when the test's own process lags under load
    cmd = [sys.executable, "-m", "archsearch.cli.main", "--log-format", "json", "--log-interval", "0", "profile",
           str(_candidate(tmp_path)), "--target", "cpu", "--calibrate", "0", "--min-time", "1.0", "--max-time",
           "1.2", "--sentinel-every", "0", "--flush-mb", "0", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp_path)
    deadline = time.time() + 120
    seen = 0
    try:
        for line in proc.stdout:  # a JSON line per block: stop once a few blocks are done
            if line.startswith("{") and json.loads(line)["done"] >= 1:
                seen = json.loads(line)["done"]
                break
            if time.time() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert seen >= 1, err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("interrupted: profile stopped; rerun the same command to continue "
                                            "(the blocks measured so far are kept)"), err
    assert "Traceback" not in err
    from archsearch.cost.latency import load_table

    assert 1 <= len(load_table(out)) < 13  # what was measured before Ctrl-C is on disk


# --------------------------------------------------------------------------- quiet and quick start

#: runs several commands in one process (as a user runs them one by one: a fresh process would
#: print the same); records each exit code and the modules loaded after the first ``mark`` ones
_WRAPPER = """
import json, sys
from archsearch.cli.main import app
runs, mark = json.loads(sys.argv[1]), int(sys.argv[2])
codes, modules = [], None
for i, argv in enumerate(runs):
    if i == mark:
        modules = sorted(sys.modules)
    try:
        rv = app(argv, prog_name="archsearch", standalone_mode=False)
        codes.append(rv if isinstance(rv, int) else 0)
    except SystemExit as exc:
        codes.append(exc.code or 0)
    except BaseException as exc:  # a click/typer exit
        codes.append(getattr(exc, "exit_code", repr(exc)))
if modules is None:
    modules = sorted(sys.modules)
sys.stdout.write("\\n@@" + json.dumps({"codes": codes, "modules": modules}) + "\\n")
"""


def _run_commands(runs: list[list[str]], mark: int, cwd: Path, timeout: int = 600) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(runs), str(mark)], env=_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.rsplit("\n@@", 1)[1])
    return report, proc.stderr


def _foreign(stderr: str) -> list[str]:
    """stderr lines that archsearch did not write (a third-party warning, a tqdm bar, ...)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not OWN.match(ln)]


@pytest.mark.slow
def test_validate_show_predict_and_help_import_neither_diffusers_nor_dynamo_and_print_no_noise(tmp_path):
    cand = _candidate(tmp_path)
    table = str(ROOT / "latency_tables" / "tiny-cpu-r16.csv")
    runs = [["--help"], ["validate", str(SPACES / "tiny.yaml")], ["show", str(SPACES / "tiny.yaml"), "-n", "0"],
            ["predict", str(cand), "--table", table], ["predict", "tiny", "--table", table, "-n", "2"]]
    report, err = _run_commands(runs, len(runs), tmp_path)
    assert report["codes"] == [0] * len(runs), (report["codes"], err)
    loaded = set(report["modules"])
    assert "diffusers" not in loaded and "torch._dynamo" not in loaded, sorted(
        m for m in loaded if m.startswith(("diffusers", "torch._dynamo")))[:5]
    assert "transformers" not in loaded
    assert not _foreign(err), err


def test_model_memory_counts_need_no_diffusers_and_match_the_real_blocks():
    """The memory check (validate, show, build) counts parameters with twins of diffusers'
    layers: the same numbers as the blocks built with diffusers, for every block type shipped."""
    import torch

    from archsearch._resources import bundled_spaces, find_space
    from archsearch.candidate import largest_candidate, load_candidate, sample_many
    from archsearch.model import create_block, walk
    from archsearch.model._blocks import block_numel
    from archsearch.spec import load_space

    seen: dict = {}
    for name in bundled_spaces():
        path = find_space(name)
        if name.startswith("reference/"):
            cands = [load_candidate(path)]
        else:
            space = load_space(path)
            cands = [largest_candidate(space), *sample_many(space, 3, 0)]
        for c in cands:
            for s in walk(c):
                seen.setdefault((s.type, s.params), name)
    gelu = dict(next(p for (t, p) in seen if t == "transformer"))
    seen[("transformer", tuple(sorted({**gelu, "ffn_type": "gelu"}.items())))] = "gelu"
    types = set()
    for (type_, params), _ in seen.items():
        with torch.device("meta"):
            block = create_block(type_, dict(params))
        n = sum(p.numel() for p in block.parameters())
        assert block_numel(type_, dict(params)) == (n, n + sum(b.numel() for b in block.buffers())), (type_, params)
        types.add(type_)
    assert {"resnet", "transformer", "time_embed", "downsample", "upsample", "text_time_embed"} <= types


def test_the_noise_filters_drop_only_their_own_messages():
    import logging

    from archsearch import _quiet

    _quiet.install()
    _quiet.install()  # idempotent: one filter per logger
    pytree = logging.getLogger("torch.utils._pytree")
    assert sum(isinstance(f, _quiet._DropMessages) for f in pytree.filters) == 1
    seen: list[str] = []

    class Keep(logging.Handler):  # on each logger itself: diffusers stops propagation to the root
        def emit(self, record):
            seen.append(record.getMessage())

    names = ["torch.utils._pytree", "diffusers.pipelines.pipeline_utils", "diffusers.quantizers.torchao.torchao_quantizer"]
    handler = Keep(logging.WARNING)
    levels = {name: logging.getLogger(name).level for name in names}  # a library may have set ERROR
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque "
                       "value type. Calling register_constant() on Enum subclasses is deprecated", "<enum 'X'>")
        pytree.warning("something else about pytrees")
        pipe = logging.getLogger("diffusers.pipelines.pipeline_utils")
        pipe.warning("Expected types for unet: (UNet2DConditionModel,), got ArchUNetDiffusers.")
        pipe.warning("Expected types for vae: (AutoencoderKL,), got MyVAE.")  # not ours: kept
        logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning(
            "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`")
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(levels[name])
    assert seen == ["something else about pytrees", "Expected types for vae: (AutoencoderKL,), got MyVAE."]
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled()


@pytest.mark.slow
def test_train_generate_prepare_and_show_print_only_archsearch_lines(sd_checkpoint, pictures, tmp_path):
    from search_helpers import make_spec

    cand = _candidate(tmp_path)
    spec = make_spec(tmp_path, ROOT / "latency_tables" / "tiny-cpu-r16.csv",
                     proxy={"teacher": {"diffusers": str(sd_checkpoint)}, "resolution": 16})
    cache, out = tmp_path / "cache", tmp_path / "trained"
    runs = [
        ["show", str(SPACES / "tiny.yaml"), "-n", "1"],
        ["data", "prepare", str(pictures), "--teacher", str(sd_checkpoint), "--out", str(cache), "--workers", "0",
         "--batch", "8", "--shard-size", "8", "--dtype", "float32", "--device", "cpu", "--holdout", "0.25"],
        ["train", str(cand), "--spec", str(spec), "--data", str(cache), "--steps", "2", "--width-mult", "0.5",
         "--batch", "2", "--device", "cpu", "--out", str(out), "--sample-every", "0", "--eval-every", "0",
         "--checkpoint-every", "0"],
        ["generate", str(out), "--prompt", "a red circle", "--steps", "2", "--device", "cpu",
         "--out", str(tmp_path / "pictures")],
    ]
    report, err = _run_commands(runs, len(runs), tmp_path)
    assert report["codes"] == [0] * len(runs), (report["codes"], err)
    assert not _foreign(err), err


# --------------------------------------------------------------------------- help text as written


def _commands():
    from typer.main import get_command

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(get_command(app), []))


#: commands whose help is checked elsewhere (none: every example line is at most 76 characters,
#: a longer one continued with `\` on an indented line)
_NOT_YET: set[str] = set()


def _examples(doc: str) -> list[str]:
    """Every example command line of a docstring (a ``\\``-continued command: each of its lines),
    without a trailing ``  (comment)``."""
    out, cont = [], False
    for ln in inspect.cleandoc(doc).splitlines():
        s = ln.strip()
        if cont or re.match(r"(Examples?:\s*)?(archsearch|accelerate|torchrun) ", s):
            out.append(re.split(r"\s{2,}\(", s)[0])
        cont = s.endswith("\\")
    return out


def test_every_example_in_help_renders_on_one_line_as_written():
    checked = 0
    for path, cmd in _commands():
        if path[0] in _NOT_YET:
            continue
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert r.exit_code == 0, r.output
        lines = [ln.strip() for ln in r.output.splitlines()]
        for example in _examples(cmd.help or ""):
            assert any(example in ln for ln in lines), (path, example, r.output)
            checked += 1
    assert checked >= 20
    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "80"})
    assert "archsearch run search_spaces/unet_mobile.yaml --backend ray \\" in r.output
    assert "    --address 10.0.0.1:6379" in r.output


def test_help_prose_is_reflowed_and_examples_kept_line_for_line():
    from archsearch.cli.main import reflow

    doc = """Summary line.

        A paragraph hard-wrapped
        at some width, in the source.

        Examples:

          archsearch run a.yaml
          archsearch train b.yaml --data c \\
              --steps 5
        """
    assert reflow(doc) == ("Summary line.\n\nA paragraph hard-wrapped at some width, in the source.\n\nExamples:\n\n"
                           "  archsearch run a.yaml\n  archsearch train b.yaml --data c \\\n      --steps 5")
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "(task + output KD + feature KD, timestep-aware rescaling), with accelerate" in r.output


# --------------------------------------------------------------------------- a copied space's table


def _copy_tiny(tmp_path: Path, name: str = "my_space", edit=None) -> Path:
    data = yaml.safe_load((SPACES / "tiny.yaml").read_text())
    data["name"] = name
    if edit:
        edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_copied_and_renamed_space_is_told_which_table_fits_and_run_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _copy_tiny(tmp_path)
    r = runner.invoke(app, ["validate", "my_space.yaml"])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1, r.output  # one line
    w = warnings[0]
    assert "no latency table for space 'my_space': latency_tables/my_space-cpu-r16.csv does not exist" in w, w
    shipped = ROOT / "latency_tables" / "tiny-cpu-r16.csv"
    assert f"{shipped} (bundled with archsearch) was made for space 'tiny' with the same blocks" in w, w
    assert f"`search: {{latency_table: {shipped}}}` in my_space.yaml" in w, w
    assert "`archsearch profile my_space.yaml --target cpu`" in w, w

    r = runner.invoke(app, ["run", "my_space.yaml", "--reports-dir", str(tmp_path / "reports")])
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "was made for space 'tiny' with the same blocks" in r.output
    assert not (tmp_path / "reports").exists()  # refused before any work

    # the advice works
    with open("my_space.yaml", "a") as f:
        f.write(f"search: {{latency_table: {shipped}}}\n")
    r = runner.invoke(app, ["validate", "my_space.yaml"])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert f"latency table: {shipped}" in r.output

    # other blocks: no table is offered (only the way to make one)
    def wider(data):
        data["stages"][0]["channels"] = {"choice": [16, 64]}

    _copy_tiny(tmp_path, "other", wider)
    r = runner.invoke(app, ["validate", "other.yaml"])
    assert r.exit_code == 0 and "with the same blocks" not in r.output, r.output
    assert "latency_tables/other-cpu-r16.csv does not exist" in r.output

    # a copy with its own constraints (they do not change the blocks) is offered its source's table
    def tighter(data):
        data["constraints"] = {"max_params": 1.0e6}

    _copy_tiny(tmp_path, "strict", tighter)
    r = runner.invoke(app, ["validate", "strict.yaml"])
    assert "was made for space 'tiny' with the same blocks" in r.output, r.output


def test_run_takes_a_bundled_space_by_name_as_validate_does(tmp_path, monkeypatch):
    """`archsearch run tiny` said `tiny: file not found` while its help offers bundled names."""
    from archsearch._resources import find_space

    monkeypatch.chdir(tmp_path)  # no search_spaces/ here: only the bundled name can resolve
    assert find_space("tiny").name == "tiny.yaml"
    r = runner.invoke(app, ["run", "no_such_space"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith(
        "error: no_such_space: file not found (allowed: a search-space YAML file, or a bundled space: tiny,")

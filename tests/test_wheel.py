"""The wheel works outside the repository: build it, install it where the checkout is not
importable, and run the README's first commands from an empty folder.

The wheel is built offline (``--no-build-isolation``: hatchling comes with the dev extras) and
installed into a fresh virtual environment that reuses this environment's packages through a
``.pth`` line (torch is not installed again; this environment's own ``.pth`` files, among them
the editable install of the checkout, are not run there). Everything runs from empty folders,
so a default that still pointed at the repository would fail here.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from search_helpers import PROXY

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _flat(proc: subprocess.CompletedProcess) -> str:
    """stdout + stderr with rich's line wrapping undone."""
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # nothing downloads
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["COLUMNS"] = "1000"  # rich wraps long paths otherwise

    dist = base / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                  str(ROOT)], base, env)
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    (wheel,) = dist.glob("archsearch-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        base, env).stdout.strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_reuse_deps.pth").write_text("\n".join(ours) + "\n")  # torch & co., not their .pth files
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--ignore-installed", "--no-warn-script-location", str(wheel)], base, env)
    return {"wheel": wheel, "venv": venv, "py": py, "exe": venv / "bin" / "archsearch", "env": env,
            "purelib": purelib}


def test_the_wheel_carries_the_shipped_files_and_an_spdx_license(installed: dict):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for f in ("search_spaces/unet_mobile.yaml", "search_spaces/video_mobile.yaml", "search_spaces/tiny.yaml",
              "search_spaces/reference/sd15_unet.yaml", "latency_tables/devices/apple-a18-pro-ane.yaml",
              "latency_tables/unet_mobile-ane-r128-estimate.csv", "latency_tables/tiny-cpu-r16.csv"):
        assert f"archsearch/_bundled/{f}" in names, f
    meta = zipfile.ZipFile(installed["wheel"]).read("archsearch-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta


def test_installed_archsearch_runs_from_an_empty_folder(installed: dict, tmp_path: Path):
    env, exe = installed["env"], str(installed["exe"])
    bundled = installed["purelib"] / "archsearch" / "_bundled"
    work = tmp_path / "empty"
    work.mkdir()

    where = _run([str(installed["py"]), "-c", "import archsearch, archsearch._resources as r; "
                  "print(archsearch.__file__); print(r.bundled_root())"], work, env).stdout.split()
    assert Path(where[0]).is_relative_to(installed["purelib"]), where  # not the checkout
    assert Path(where[1]) == bundled

    out = _flat(_run([exe, "validate", "unet_mobile"], work, env))
    assert f"ok {bundled}/search_spaces/unet_mobile.yaml (bundled with archsearch)" in out
    assert f"latency table: {bundled}/latency_tables/unet_mobile-ane-r128-estimate.csv (bundled" in out

    out = _flat(_run([exe, "profile", "--target", "ane", "--dry-run"], work, env))
    assert f"unique blocks in {bundled}/search_spaces/unet_mobile.yaml" in out
    assert f"({bundled}/latency_tables/devices/apple-a18-pro-ane.yaml)" in out
    assert "estimated time" in out
    assert sorted(os.listdir(work)) == []  # a dry run writes nothing

    # init: the bundled tiny space and its CPU table; a user's small proxy (the shipped one
    # trains a 1000-step teacher) makes a 2-trial run quick; the teacher cache is the session's
    out = _flat(_run([exe, "init", "--space", "tiny"], work, env))
    assert "wrote tiny.yaml" in out and "wrote latency_tables/tiny-cpu-r16.csv" in out
    spec = work / "tiny.yaml"
    data = yaml.safe_load(spec.read_text())
    data["proxy"] = PROXY
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    out = _flat(_run([exe, "run", "tiny.yaml", "--trials", "2", "--no-progress"], work, env, timeout=240))
    assert f"latency table: {work}/latency_tables/tiny-cpu-r16.csv" in out
    report = work / "reports" / "tiny"
    assert (report / "index.html").is_file() and (report / "study.db").is_file()
    trials = (report / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 2, trials
    assert not list(bundled.rglob("*.db")) and not (installed["purelib"] / "archsearch" / "reports").exists()


def test_the_sdist_holds_what_the_tests_need(tmp_path: Path):
    import tarfile

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)], ROOT, env)
    (sdist,) = tmp_path.glob("archsearch-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files", "tests", "search_spaces", "latency_tables", "docs", "archsearch"],
                             cwd=ROOT, capture_output=True, text=True)
    wanted = set(tracked.stdout.split()) if tracked.returncode == 0 else set()
    wanted |= {"tests/conftest.py", "tests/search_helpers.py", "docs/design.md", "search_spaces/tiny.yaml",
               "latency_tables/tiny-cpu-r16.csv", "latency_tables/devices/apple-a18-pro-ane.yaml",
               "pyproject.toml", "constraints.txt", "Makefile", "README.md"}
    assert not wanted - names, sorted(wanted - names)

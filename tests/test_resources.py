"""The shipped files: spaces by name, device profiles, default latency tables, ``archsearch init``.

The user's own files always win over the bundled ones, and messages name the file used.
(Installed from a wheel, the same lookups read the package data: ``tests/test_wheel.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from archsearch._resources import (
    bundled_root,
    bundled_spaces,
    describe,
    find_file,
    find_space,
    init_workdir,
    is_bundled,
)
from archsearch.cli.main import app
from archsearch.errors import ArchsearchError, SpecError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_checkout_bundles_its_own_folders():
    assert bundled_root().resolve() == ROOT
    names = bundled_spaces()
    assert {"unet_mobile", "video_mobile", "tiny", "reference/sd15_unet"} <= set(names)
    assert names.index("unet_mobile") < names.index("reference/sd15_unet")  # top level first
    assert is_bundled(ROOT / "search_spaces" / "tiny.yaml")
    assert not is_bundled(ROOT / "pyproject.toml")
    assert describe(ROOT / "search_spaces" / "tiny.yaml").endswith("(bundled with archsearch)")


def test_find_space_by_name_path_or_repository_path(empty_cwd: Path):
    shipped = ROOT / "search_spaces" / "unet_mobile.yaml"
    assert find_space("unet_mobile").resolve() == shipped
    assert find_space("search_spaces/unet_mobile.yaml").resolve() == shipped  # the README's path, elsewhere
    assert find_space("reference/sd15_unet").resolve() == ROOT / "search_spaces" / "reference" / "sd15_unet.yaml"
    with pytest.raises(SpecError, match=r"^nope: file not found \(allowed: .*unet_mobile.*reference/sd15_unet"):
        find_space("nope")
    with pytest.raises(SpecError, match=r"missing\.yaml: file not found"):
        find_space(empty_cwd / "missing.yaml")


def test_the_users_files_win(empty_cwd: Path):
    mine = empty_cwd / "unet_mobile.yaml"
    mine.write_text((ROOT / "search_spaces" / "unet_mobile.yaml").read_text())
    assert find_space("unet_mobile") == Path("unet_mobile.yaml")
    assert find_space("unet_mobile.yaml") == Path("unet_mobile.yaml")
    (empty_cwd / "search_spaces").mkdir()
    (empty_cwd / "search_spaces" / "tiny.yaml").write_text("x")
    assert find_space("tiny") == Path("search_spaces/tiny.yaml")
    assert find_file("latency_tables/tiny-cpu-r16.csv", [empty_cwd]).resolve() == ROOT / "latency_tables" / "tiny-cpu-r16.csv"
    (empty_cwd / "latency_tables").mkdir()
    (empty_cwd / "latency_tables" / "tiny-cpu-r16.csv").write_text("x")
    assert find_file("latency_tables/tiny-cpu-r16.csv", [empty_cwd]) == empty_cwd / "latency_tables" / "tiny-cpu-r16.csv"


def test_device_profiles_user_first_then_shipped(empty_cwd: Path):
    from archsearch.cost.latency import available_devices, load_device

    shipped = load_device("apple-a18-pro-ane")
    assert Path(shipped.path).resolve() == ROOT / "latency_tables" / "devices" / "apple-a18-pro-ane.yaml"
    mine = empty_cwd / "latency_tables" / "devices"
    mine.mkdir(parents=True)
    data = yaml.safe_load(Path(shipped.path).read_text())
    data["name"] = "my-npu"
    (mine / "my-npu.yaml").write_text(yaml.safe_dump(data))
    (mine / "apple-a18-pro-ane.yaml").write_text(yaml.safe_dump(data))
    # a folder of one's own no longer hides the shipped profiles
    assert {"my-npu", "apple-a16-ane", "apple-a18-pro-ane"} <= set(available_devices())
    assert load_device("my-npu").name == "my-npu"
    assert Path(load_device("apple-a18-pro-ane").path).resolve() == (mine / "apple-a18-pro-ane.yaml").resolve()
    with pytest.raises(ArchsearchError, match=r"unknown device profile 'nope' \(allowed: .*apple-a16-ane.*my-npu"):
        load_device("nope")


def test_default_latency_table_user_then_shipped(empty_cwd: Path):
    from archsearch.search import resolve_latency_table
    from archsearch.search._study import SearchSettings
    from archsearch.spec import load_space

    space = load_space(find_space("unet_mobile"))
    settings = SearchSettings.from_space(space)
    shipped = ROOT / "latency_tables" / "unet_mobile-ane-r128-estimate.csv"
    assert resolve_latency_table(settings, space).resolve() == shipped
    mine = empty_cwd / "latency_tables" / shipped.name
    mine.parent.mkdir()
    mine.write_bytes(shipped.read_bytes())
    assert resolve_latency_table(settings, space) == mine  # the working directory's table wins


def test_init_copies_a_space_and_its_table(empty_cwd: Path):
    r = runner.invoke(app, ["init", "work"])
    assert r.exit_code == 0, r.output
    work = empty_cwd / "work"
    assert (work / "unet_mobile.yaml").read_bytes() == (ROOT / "search_spaces" / "unet_mobile.yaml").read_bytes()
    table = work / "latency_tables" / "unet_mobile-ane-r128-estimate.csv"
    assert table.read_bytes() == (ROOT / "latency_tables" / table.name).read_bytes()
    assert "wrote work/unet_mobile.yaml" in r.output and "next: archsearch run work/unet_mobile.yaml" in r.output
    # the copy is found beside the spec, whatever the working directory
    r = runner.invoke(app, ["validate", "work/unet_mobile.yaml"])
    assert r.exit_code == 0, r.output
    assert f"latency table: {table}" in " ".join(r.output.split())
    # again: identical files are kept; an edited one is refused without --force
    again = init_workdir(work)
    assert again.written == [] and len(again.kept) == 2
    (work / "unet_mobile.yaml").write_text("mine\n")
    r = runner.invoke(app, ["init", "work"])
    assert r.exit_code == 2 and r.output.startswith("error: --force not set and work/unet_mobile.yaml exists")
    assert (work / "unet_mobile.yaml").read_text() == "mine\n"
    assert runner.invoke(app, ["init", "work", "--force"]).exit_code == 0
    assert (work / "unet_mobile.yaml").read_bytes() == (ROOT / "search_spaces" / "unet_mobile.yaml").read_bytes()
    r = runner.invoke(app, ["init", "--space", "sd15"])
    assert r.exit_code == 2 and "error: --space 'sd15': unknown bundled space (allowed: tiny," in r.output


def test_init_tiny_takes_the_cpu_table_and_says_when_there_is_none(empty_cwd: Path):
    res = init_workdir(".", "tiny")
    assert [p.name for p in res.tables] == ["tiny-cpu-r16.csv"] and res.target == "cpu"
    r = runner.invoke(app, ["init", "v", "--space", "video_mobile"])
    assert r.exit_code == 0, r.output
    assert "no bundled latency table of video_mobile" in " ".join(r.output.split())
    assert not (empty_cwd / "v" / "latency_tables").exists()


def test_commands_take_a_bundled_space_by_name(empty_cwd: Path):
    r = runner.invoke(app, ["validate", "tiny"])
    assert r.exit_code == 0, r.output
    assert "(bundled with archsearch)" in r.output and "2,112 candidates" in r.output
    r = runner.invoke(app, ["build", "reference/sd15_unet"])
    assert r.exit_code == 0 and "859,520,964" in r.output
    r = runner.invoke(app, ["predict", "tiny", "--table", "latency_tables/tiny-cpu-r16.csv", "-n", "2"])
    assert r.exit_code == 0, r.output
    assert "tiny-cpu-r16.csv (bundled with archsearch)" in " ".join(r.output.split())
    r = runner.invoke(app, ["validate", "no_such_space"])
    assert r.exit_code == 2 and "error: no_such_space: file not found (allowed:" in r.output

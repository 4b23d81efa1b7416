"""The Space's configuration, the requirements, the LFS attributes and the wheel agree."""

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV_TOOLS = ("pytest", "playwright", "ruff")


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def requirements(name: str) -> dict[str, str]:
    """Package name -> specifier, from a requirements file (comments and -r lines skipped)."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package, specifier = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            pins[package.lower()] = specifier.strip()
    return pins


def test_space_front_matter_names_the_app_python_and_pinned_gradio():
    config = front_matter()
    assert config["sdk"] == "gradio"
    assert config["sdk_version"] == requirements("requirements.txt")["gradio"].removeprefix("==")
    assert str(config["python_version"]) == "3.11"
    assert (ROOT / config["app_file"]).is_file()
    assert 0 < len(config["short_description"]) <= 60  # the Hub's limit


def test_space_requirements_hold_no_test_or_lint_tools():
    runtime = requirements("requirements.txt")
    assert not set(DEV_TOOLS) & set(runtime)
    assert runtime["torch"] == "==2.13.0"
    dev_lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev_lines
    assert set(DEV_TOOLS) <= set(requirements("requirements-dev.txt"))


def test_pyproject_app_extra_pins_the_same_gradio_and_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gradio = [d for d in project["optional-dependencies"]["app"] if d.startswith("gradio")]
    assert gradio == [f"gradio{requirements('requirements.txt')['gradio']}"]
    assert project["requires-python"] == f">={front_matter()['python_version']}"


@pytest.mark.slow
def test_every_committed_binary_is_tracked_by_lfs_attributes():
    patterns = [
        line.split()[0]
        for line in (ROOT / ".gitattributes").read_text().splitlines()
        if "filter=lfs" in line
    ]
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    binaries = [f for f in files if b"\0" in (ROOT / f).read_bytes()[:8000]]
    assert binaries, "the checkpoints should be committed"
    untracked = [f for f in binaries if not any(fnmatch.fnmatch(Path(f).name, p) for p in patterns)]
    assert untracked == []


@pytest.mark.slow
def test_the_wheel_holds_the_library_and_its_command_only(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and egg-info in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "issp", source / "issp", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("analysis", "webapp"):
        (source / folder).mkdir()
        for module in (ROOT / folder).glob("*.py"):
            shutil.copy(module, source / folder)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), "-q"],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("issp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    # analysis/ and webapp/ would be top-level packages named like any other project's.
    assert {name for name in top if not name.endswith(".dist-info")} == {"issp"}
    assert {"issp/cli.py", "issp/catalogue.py", "issp/models/edsr.py"} <= set(names)
    assert {"issp/study/__init__.py", "issp/study/grid.py"} <= set(names)  # `issp study`
    assert "issp/sparse_kernel.c" in names  # compiled on first use
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "issp = issp.cli:main_entry" in zipfile.ZipFile(wheel).read(entry_points).decode()

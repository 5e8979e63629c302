"""singularity/braintseg.def: its sections, and its install command in a clean venv.

Containers cannot be built here, so the test stages what ``%files`` copies, then runs the pip
command of ``%post`` (``/opt/braintseg`` replaced by the staging folder, ``python3`` by a fresh
``python -m venv`` without system site-packages).  Trade-off: a full install with dependencies
would download TensorFlow (~600 MB) on every run, so the venv install adds ``--no-deps`` (it
proves the project builds, in pip's isolated build environment as in the image, and installs
from exactly the copied files, with its console script and package data), and dependency
resolution is checked separately with ``pip install --dry-run --report`` (metadata only).
Both need the package index (the build backend is fetched from it) and skip without it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEF = REPO / "singularity" / "braintseg.def"
PREFIX = "/opt/braintseg"


def project_key(key: str) -> str:
    """A string value of pyproject.toml's [project] table (tomllib is Python >= 3.11 only)."""
    match = re.search(rf'^{key} = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match, f"pyproject.toml has no {key} = \"...\""
    return match.group(1)


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Header keywords (``Bootstrap``, ``From``) and ``%section`` bodies of a definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%"):
            current = sections.setdefault(line[1:].split()[0], [])
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, {k: "\n".join(v).strip() for k, v in sections.items()}


@pytest.fixture(scope="module")
def definition() -> tuple[dict[str, str], dict[str, str]]:
    return parse_def(DEF.read_text())


def pip_commands(post: str) -> list[list[str]]:
    return [shlex.split(ln) for ln in post.splitlines() if re.search(r"\bpip install\b", ln)]


def test_header_pins_a_tensorflow_gpu_base_image(definition):
    header, _ = definition
    assert header["Bootstrap"] == "docker"
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu", header["From"]), header


def test_sections_run_braintseg(definition):
    _, sections = definition
    assert {"files", "post", "environment", "runscript", "test", "help"} <= set(sections)
    assert sections["runscript"] == 'exec braintseg "$@"'
    assert sections["test"] == "braintseg info"
    assert "PYTHONNOUSERSITE=1" in sections["environment"]
    (cmd,) = pip_commands(sections["post"])
    assert cmd[-1].startswith(PREFIX) and "--no-cache-dir" in cmd


def test_files_copy_everything_the_install_needs(definition):
    _, sections = definition
    pairs = [ln.split() for ln in sections["files"].splitlines()]
    sources = {src for src, _ in pairs}
    assert all(dest == f"{PREFIX}/{src}" for src, dest in pairs), pairs
    assert all((REPO / s).exists() for s in sources), sources
    assert {"pyproject.toml", project_key("readme"), "src"} <= sources


def test_runscript_and_test_sections_work_as_shell(definition, tmp_path):
    _, sections = definition
    run = subprocess.run(["bash", "-c", sections["runscript"], "braintseg", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "braintseg, version" in run.stdout, run.stderr
    test = subprocess.run(["bash", "-c", sections["test"]], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert test.returncode == 0 and "keras backend" in test.stdout, test.stderr


def index_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=5).close()  # noqa: S310
    except OSError:
        return False
    return True


def stage(sections: dict[str, str], root: Path) -> Path:
    """Copy what %files copies into ``root`` (which stands for /opt/braintseg)."""
    for line in sections["files"].splitlines():
        src, dest = line.split()
        target = root / Path(dest).relative_to(PREFIX)
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, target)
    return root


@pytest.mark.slow
def test_post_install_command_in_a_clean_venv(definition, tmp_path):
    if not index_reachable():
        pytest.skip("package index not reachable: the build backend (setuptools, wheel) cannot "
                    "be fetched into a clean venv offline")
    _, sections = definition
    staged = stage(sections, tmp_path / "opt_braintseg")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    py = tmp_path / "venv" / "bin" / "python"
    (cmd,) = pip_commands(sections["post"])
    assert cmd[:4] == ["python3", "-m", "pip", "install"], cmd
    target = cmd[-1].replace(PREFIX, str(staged))
    args = [str(py), *cmd[1:-1], "--no-deps", "-q", target]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr

    probe = ("import importlib.metadata as m, importlib.resources as r, braintseg; "
             "print(m.version('braintseg')); print(braintseg.__file__); "
             "print(r.files('braintseg').joinpath('sample_data').is_dir())")
    info = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True,
                          cwd=tmp_path, env=env).stdout.split()
    assert info[0] == project_key("version")
    assert Path(info[1]).is_relative_to(tmp_path / "venv")  # a real copy, not the checkout
    assert info[2] == "True"  # package data (bundled sample cases) installed
    assert (tmp_path / "venv" / "bin" / "braintseg").is_file()


@pytest.mark.slow
def test_post_install_dependencies_resolve(definition, tmp_path):
    if not index_reachable():
        pytest.skip("package index not reachable: dependency resolution not checked offline")
    _, sections = definition
    staged = stage(sections, tmp_path / "opt_braintseg")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    (cmd,) = pip_commands(sections["post"])
    report = tmp_path / "report.json"
    args = [str(tmp_path / "venv" / "bin" / "python"), *cmd[1:-1], "--dry-run",
            "--ignore-installed", "-q", "--report", str(report),
            cmd[-1].replace(PREFIX, str(staged))]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"braintseg", "tensorflow", "keras", "tables", "nibabel", "h5py", "click"} <= names

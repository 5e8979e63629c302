"""CLI shape: help everywhere without importing Keras, version, info, one-line errors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from braintseg import __version__
from braintseg.cli import cli

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_a_summary(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and len(cli.commands[command].get_short_help_str()) > 10


def test_help_for_all_commands_does_not_import_keras_or_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from braintseg.cli import cli\n"
        "r = CliRunner()\n"
        "assert r.invoke(cli, ['--help']).exit_code == 0\n"
        "for name in cli.commands:\n"
        "    assert r.invoke(cli, [name, '--help']).exit_code == 0, name\n"
        "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


#: TensorFlow's C++ start-up lines (absl, oneDNN, CPU features, CUDA probing)
NATIVE_NOISE = re.compile(r"oneDNN|absl|E0000|I0000|W0000|cuda|TF_ENABLE_ONEDNN_OPTS|"
                          r"cpu_feature_guard|rebuild TensorFlow", re.IGNORECASE)


def _braintseg(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m braintseg ARGS`` in its own process, TF_CPP_MIN_LOG_LEVEL not set."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "braintseg", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_info_names_the_installed_tensorflow_and_prints_no_native_noise():
    """``info`` (which imports TensorFlow for the GPU list) prints no C++ start-up lines, and
    names the distribution that installed TensorFlow (tensorflow-cpu here, not "not
    installed")."""
    proc = _braintseg("info")
    assert proc.returncode == 0, proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if NATIVE_NOISE.search(ln)], proc.stderr
    for key in ("keras backend", "tables", "hdf5", "blosc", "gpus"):
        assert key in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("tensorflow "))
    if importlib.util.find_spec("tensorflow") is None:
        assert line.split()[-1] == "not installed"
        return
    match = re.fullmatch(r"tensorflow\s+(\S+) \(([\w.-]+)\)", line)
    assert match, line
    version, dist = match.groups()
    assert importlib.metadata.version(dist) == version
    files = importlib.metadata.files(dist) or []
    assert any(str(f).replace("\\", "/") == "tensorflow/__init__.py" for f in files), dist


@pytest.mark.slow  # two more TensorFlow imports and a tiny training
def test_native_lines_only_with_vv(synthetic_store, tmp_path):
    """A tiny ``train`` prints no C++ start-up lines; ``-vv`` lets them through (where
    TensorFlow prints any on this machine)."""
    train = ["train", "-c", str(SMOKE), "-i", str(synthetic_store), "--fold", "0"]
    proc = _braintseg(*train, "-o", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if NATIVE_NOISE.search(ln)], proc.stderr
    loud = _braintseg("-vv", *train, "-o", str(tmp_path / "loud"))
    assert loud.returncode == 0, loud.stderr
    quiet = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, timeout=300,
                           env={k: v for k, v in os.environ.items()
                                if k != "TF_CPP_MIN_LOG_LEVEL"})
    if NATIVE_NOISE.search(quiet.stderr):  # TensorFlow is noisy here: -vv must show it
        assert NATIVE_NOISE.search(loud.stderr), loud.stderr


def test_config_error_is_one_line_without_traceback(tmp_path):
    result = CliRunner().invoke(
        cli, ["prepare", "-i", str(tmp_path), "-o", str(tmp_path / "s.h5"),
              "--set", "data.n_fold=3"]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == ["Error: unknown key 'data.n_fold' in config / --set "
                     "(did you mean 'data.n_folds'?)"]


def test_debug_flag_shows_the_exception(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["--debug", "prepare", "-i", str(tmp_path), "-o", str(tmp_path / "s.h5"), "--set", "x.y=1"],
    )
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "ConfigError"


def test_missing_config_file_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["train", "-c", str(tmp_path / "nope.yaml"), "-i", "s.h5",
                                      "--fold", "0", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_ctrl_c_inside_a_c_extension_is_the_same_one_line(capsys):
    """A KeyboardInterrupt that a C extension turns into "SystemError: ... returned a result
    with an exception set" (seen inside TensorFlow during a Ctrl-C test) ends as Ctrl-C does;
    any other SystemError is not hidden."""
    import pytest

    from braintseg.cli import user_errors

    def c_extension_interrupted():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<built-in function __import__> returned a result with an "
                              "exception set") from exc

    with pytest.raises(SystemExit) as info, user_errors(lambda: ("checkpoint X", "cmd")):
        c_extension_interrupted()
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "braintseg: interrupted; checkpoint X; continue with: cmd")
    with pytest.raises(SystemError, match="unrelated"), user_errors():
        raise SystemError("unrelated")

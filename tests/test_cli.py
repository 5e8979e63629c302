"""CLI shape: help everywhere without importing Keras, version, info, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from braintseg import __version__
from braintseg.cli import cli


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


def test_info_lists_backend_and_library_versions():
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for key in ("keras backend", "tables", "hdf5", "blosc", "gpus"):
        assert key in result.output


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

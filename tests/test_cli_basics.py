"""The CLI's shape: subcommands listed, unbuilt ones fail cleanly, bad model names give one line + exit 2."""
import pytest

from clitools import exit_status, one_error_line, run_process

SUBCOMMANDS = ("convert", "distill", "export", "eval", "bench", "info")


def test_help_lists_every_subcommand():
    result = run_process("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert f"  {name} " in result.stdout, name


def test_model_name_routes_to_convert():
    result = run_process("some-model", "--help")
    assert result.returncode == 0, result.stderr
    assert "rla-convert convert" in result.stdout


@pytest.mark.parametrize("args", [["info", "no-such-model"], ["info", "/nonexistent/dir"]])
def test_unknown_model_is_one_line_exit_2(args):
    result = run_process(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("rla-convert: error:")]
    assert len(error_lines) == 1
    assert "smollm2-135m" in error_lines[0]  # names what is accepted
    assert args[1] in error_lines[0]  # names what was tried


def test_unbuilt_subcommands_fail_cleanly():
    from rla_convert.cli._common import not_built  # noqa: F401  (the mechanism exists)

    for name in SUBCOMMANDS:
        result = run_process(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_directory_without_config_is_rejected(tmp_path):
    result = run_process("info", str(tmp_path))
    assert result.returncode == 2
    assert "config.json" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_is_the_command():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "rla_convert", "nope-model"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("rla-convert: error: no model")


@pytest.mark.parametrize("typo, meant", [("distil", "distill"), ("infoo", "info"), ("genrate", "generate")])
def test_a_mistyped_command_is_named_not_read_as_a_model(typo, meant, capsys):
    assert exit_status(typo, "recipes/cpu-smoke.yaml") == 2
    assert f"did you mean '{meant}'" in one_error_line(capsys.readouterr().err)


def test_a_bad_split_asm_switch_in_the_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RLA_KERNELS_SPLIT_ASM", "yes")
    assert exit_status("info", "smollm2-135m") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "RLA_KERNELS_SPLIT_ASM='yes'" in line and "1 or unset (on), 0 (off)" in line


def test_a_bad_backend_in_the_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RLA_KERNELS_BACKEND", "cuda")
    assert exit_status("info", "smollm2-135m") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "RLA_KERNELS_BACKEND='cuda'" in line and "torch, triton" in line

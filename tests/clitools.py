"""Running the CLI in tests, in-process or as a separate process, and reading its one error line."""
import subprocess
import sys

from rla_convert.cli import main


def exit_status(*args):
    """The exit status of ``rla-convert ARGS`` (None or 0 on success)."""
    try:
        return main(list(args))
    except SystemExit as exit_:
        return exit_.code


def run_main(capsys, *args):
    """(exit status, stdout, stderr) of ``rla-convert ARGS``."""
    status = exit_status(*args)
    out = capsys.readouterr()
    return status, out.out, out.err


def one_error_line(err: str) -> str:
    """The single ``rla-convert: error:`` line of ``err``; fails on none, several, or a traceback."""
    lines = [line for line in err.splitlines() if line.startswith("rla-convert: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_process(*args, timeout=300) -> subprocess.CompletedProcess:
    """``rla-convert ARGS`` in a fresh interpreter (what a user's shell sees: exit status, text output)."""
    code = "import sys; from rla_convert.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


# Prepended to a script run in a fresh interpreter (python -c) to show exported code works without the toolkit:
# importing rla_convert or rla_kernels fails there, as on a machine that only has torch and transformers.
WITHOUT_TOOLKIT = """import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rla_convert", "rla_kernels"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
"""

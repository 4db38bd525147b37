"""What every subcommand shares: turning user errors into one line and exit status 2."""
from __future__ import annotations

import os
import sys

import click

from ..errors import NotBuiltError, UserError

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
    click.echo(f"rla-convert: error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


def main_entry(cli: click.Group, argv=None):
    from rla_kernels.backend import BACKENDS, ENV_VAR, SPLIT_ASM_VAR, BackendUnavailableError, split_asm_requested

    try:
        split_asm_requested()  # read when the kernels import (triton_utils), which would raise there
    except ValueError:
        fail(f"environment variable {SPLIT_ASM_VAR}={os.environ[SPLIT_ASM_VAR]!r}: accepted values are 1 or unset "
             "(on), 0 (off)")

    chosen = os.environ.get(ENV_VAR)
    if chosen and chosen not in BACKENDS:  # read by every kernel call: refuse it before any work
        fail(f"environment variable {ENV_VAR}={chosen!r}: accepted values are {', '.join(BACKENDS)} (or unset)")
    try:
        cli.main(args=argv, prog_name="rla-convert", standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted")
    except click.ClickException as err:  # usage errors: click's own message, status 2
        err.show()
        sys.exit(err.exit_code)
    except (UserError, BackendUnavailableError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted")
    return 0


def not_built(command: str, issue: int):
    """Body of a subcommand the toolkit names but has not built yet."""
    raise NotBuiltError(f"'rla-convert {command}' is not built yet (tracked in issue #{issue})")

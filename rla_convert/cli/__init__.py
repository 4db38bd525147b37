"""The ``rla-convert`` command: a click group whose default subcommand is ``convert``.

``rla-convert MODEL --variant rdn`` is read as ``rla-convert convert MODEL --variant rdn``.
Each subcommand lives in its own module; errors the user can fix print one line and exit 2.
"""
from __future__ import annotations

import difflib
import os

import click

from .. import __version__
from ..checkpoints import BUNDLED_MODELS
from ..errors import UserError
from ._common import main_entry
from .bench import bench
from .convert import convert
from .distill import distill
from .eval import eval_cmd
from .export import export
from .generate import generate
from .info import info


class DefaultToConvert(click.Group):
    """Route an unknown first argument (a model name) to the ``convert`` subcommand."""

    default_command = "convert"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            near = difflib.get_close_matches(args[0], list(self.commands), n=1, cutoff=0.75)
            if near and not os.path.exists(args[0]) and args[0] not in BUNDLED_MODELS:  # 'distil', 'infoo': not a model
                raise UserError(f"no command {args[0]!r}: did you mean '{near[0]}'? (commands: "
                                f"{', '.join(self.commands)}; anything else is read as a MODEL to convert: a bundled name, a directory or a .gguf)")
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "[MODEL --variant rla|rdn|gdn [OPTIONS]] | COMMAND [ARGS]...")


@click.group(cls=DefaultToConvert, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rla-convert")
def cli():
    """Convert attention or Gated DeltaNet checkpoints into RLA / RDN linear-time models.

    \b
    rla-convert smollm2-135m --variant rdn --out DIR   convert (the default command)
    rla-convert info smollm2-135m                      show a checkpoint's architecture
    rla-convert generate DIR --prompt "Once upon"      greedy text, decode steps as CUDA-graph replays
    """


for command in (convert, distill, export, eval_cmd, generate, bench, info):
    cli.add_command(command)


def main(argv=None):
    return main_entry(cli, argv)

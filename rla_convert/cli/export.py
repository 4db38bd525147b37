"""`rla-convert export`: merge a distillation run and write a checkpoint.

Converting and exporting a checkpoint in one go is `rla-convert MODEL --variant rdn --out DIR`.
"""
import click

from ..errors import NotBuiltError


@click.command(name="export", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(args):
    """Merge a distillation run's artifact into a checkpoint (needs a distillation run: issue #5).

    To convert and export without distillation: rla-convert MODEL --variant rdn --out DIR.
    """
    raise NotBuiltError("'rla-convert export' merges a distillation run, which needs 'rla-convert distill' (issue #5); "
                        "to convert and export now: rla-convert MODEL --variant rdn --out DIR")

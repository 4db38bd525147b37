"""`rla-convert convert MODEL` (the default command)."""
import click

from ._common import not_built


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def convert(args):
    """Convert MODEL's attention into RLA / RDN layers (not built yet: issue #4)."""
    not_built("convert", 4)

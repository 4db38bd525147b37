"""`rla-convert export`."""
import click

from ._common import not_built


@click.command(name="export", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export(args):
    """Merge a distillation artifact and write a checkpoint (not built yet: issue #4)."""
    not_built("export", 4)

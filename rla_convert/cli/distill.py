"""`rla-convert distill`."""
import click

from ._common import not_built


@click.command(name="distill", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def distill(args):
    """Distil a converted model with a recipe YAML (not built yet: issue #5)."""
    not_built("distill", 5)

"""`rla-convert bench`."""
import click

from ._common import not_built


@click.command(name="bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Benchmarks: kernels, model (not built yet: issue #3)."""
    not_built("bench", 3)

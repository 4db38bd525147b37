"""`rla-convert eval`."""
import click

from ._common import not_built


@click.command(name="eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_cmd(args):
    """Perplexity, passkey retrieval and agreement with the teacher (not built yet: issue #6)."""
    not_built("eval", 6)

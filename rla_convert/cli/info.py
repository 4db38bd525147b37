"""`rla-convert info MODEL`: load a checkpoint and print its architecture."""
from __future__ import annotations

import json
from itertools import groupby

import click

from ..checkpoints import load_checkpoint
from ..inspect import architecture_summary, describe_layers


def _ranges(indices: list[int]) -> str:
    parts = []
    for _, run in groupby(enumerate(indices), key=lambda p: p[1] - p[0]):
        run = [i for _, i in run]
        parts.append(f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(model, as_json):
    """Load MODEL on the CPU and print its architecture (layers, heads, attention kind per layer).

    MODEL is a bundled name (smollm2-135m), a checkpoint directory, or a .gguf file.
    """
    if not as_json:
        click.echo(f"loading {model} ...", err=True)
    lm, _ = load_checkpoint(model, with_tokenizer=False)
    summary = architecture_summary(lm)
    layers = describe_layers(lm)
    if as_json:
        summary["layers_detail"] = [vars(layer) for layer in layers]
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"model        {model}")
    for key in ("model_type", "class", "layers", "hidden_size", "heads", "kv_heads", "head_dim", "vocab_size"):
        click.echo(f"{key:<12} {summary[key]}")
    click.echo(f"{'parameters':<12} {summary['parameters'] / 1e6:.1f}M")
    click.echo("attention per layer:")
    key = lambda layer: (layer.kind, layer.class_name, layer.conversion)  # noqa: E731
    for (kind, cls, conversion), group in groupby(layers, key=key):
        group = list(group)
        click.echo(f"  layers {_ranges([g.index for g in group]):<10} {kind:<15} {cls:<28} {conversion}")

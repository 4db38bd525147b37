"""`rla-convert distill RECIPE.yaml`: attention transfer, then LoRA distillation."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a recipe field, e.g. --set stage2.lr=1e-4 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in the recipe's output directory from its last checkpoint.")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="STEPS",
              help="Stop (after a checkpoint) once this many optimiser steps have run in this call.")
def distill(recipe, overrides, resume, stop_after):
    """Distil a converted model as RECIPE.yaml describes (see recipes/).

    Stage 1 matches each new layer's output to the teacher's attention; stage 2 trains LoRA adapters
    and the new gates against the teacher's logits. Only trained parameters are saved (OUTPUT/final/);
    `rla-convert export OUTPUT --out DIR` writes a loadable checkpoint from them.
    """
    from ..distill.recipe import load_recipe
    from ..distill.trainer import DistillRun

    spec = load_recipe(recipe, overrides)
    summary = DistillRun(spec, resume=resume, stop_after=stop_after).run()
    if summary.get("stopped"):
        click.echo(f"stopped after {stop_after} steps; continue with: rla-convert distill {recipe} --resume")
        return
    click.echo(json.dumps(summary, indent=2))
    for name, check in summary["expectations"].items():
        if isinstance(check, dict):
            verdict = "met" if check["met"] else "MISSED"
            click.echo(f"expects {name} {check['expected']}: reached {check['reached']}, {verdict}")
    click.echo(f"wrote {spec.output}/final (trained parameters), metrics.jsonl and losses.png")

"""A finished distillation run as a model: the base checkpoint, converted as the run's recipe says, with
the run's trained parameters (new gates, LoRA) loaded and the LoRA merged into the projections.

A run directory holds only what was trained (``final/trainable.safetensors``) and the recipe it ran
(``final/recipe.yaml``); the base weights come from the recipe's model, so the artifact stays small.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError


@dataclass
class DistilledRun:
    model: torch.nn.Module
    tokenizer: object
    recipe: object
    summary: dict


def is_run_dir(path) -> bool:
    return (Path(path) / "final" / "trainable.safetensors").is_file()


def load_distilled(run_dir, dtype=torch.float32) -> DistilledRun:
    from safetensors.torch import load_file

    from ..checkpoints import load_checkpoint
    from ..convert import convert_model
    from .recipe import load_recipe
    from .trainer import load_trainable_state, with_lora

    final = Path(run_dir) / "final"
    if not is_run_dir(run_dir):
        hint = " (its last checkpoint: continue with rla-convert distill RECIPE --resume)" if (Path(run_dir) / "checkpoints").is_dir() else ""
        raise UserError(f"{run_dir} is not a finished distillation run{hint}; accepted: the output directory of a "
                        "completed `rla-convert distill` run (it has final/trainable.safetensors)")
    recipe = load_recipe(final / "recipe.yaml")
    base, tokenizer = load_checkpoint(recipe.model, dtype=torch.float32)
    student = convert_model(base, copy.deepcopy(recipe.conversion), progress=False).model
    peft_model = with_lora(student, recipe)
    load_trainable_state(peft_model, load_file(str(final / "trainable.safetensors")))
    model = peft_model.merge_and_unload().to(dtype).eval()
    summary_path = final / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return DistilledRun(model, tokenizer, recipe, summary)

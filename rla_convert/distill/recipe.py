"""Distillation recipes: one YAML file describes a whole run; this module reads and checks it.

Every field is typed (the dataclasses below are the schema). A wrong field name or type is reported
with the file and line it sits on; `--set a.b=value` overrides any field before the checks run.
The `conversion` section takes the fields of `rla_convert.config.ConversionConfig` (one schema for
conversion options, here and on the command line), including the training-only `recompute_states`
(false: the kernels keep their state walk for the backward, memory for speed; see its comment there).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConversionConfig
from ..errors import UserError

PRECISIONS = ("bf16", "fp16", "fp32")
MLA_LORA_TARGETS = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")  # in the default since 2026-12-05
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj") + MLA_LORA_TARGETS


@dataclass
class DataSpec:
    train: str  # a source rla_convert.data accepts; relative paths are relative to the recipe file
    heldout: str | None = None  # a separate held-out source; else `heldout_fraction` of train's documents
    heldout_fraction: float = 0.02
    seq_len: int = 512
    max_train_tokens: int | None = None
    cache_dir: str = ".rla-cache/data"
    split_seed: int = 0


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # module names in each converted layer (a name no layer has adapts nothing): an MLA-converted layer's q/k/v Linears
    # are q_a_proj, q_b_proj (or q_proj), kv_a_proj_with_mqa and kv_b_proj, in the default so that they are adapted too
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


@dataclass
class Stage1Spec:
    """Attention transfer: new parameters learn to match each layer's softmax output (MSE)."""

    steps: int = 200
    lr: float = 3e-3
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    # also train stage 2's LoRA adapters (stage2.lora: rank, targets) on the layer-output MSE, still
    # without a backward through the model; stage 2 then continues from them
    lora: bool = False
    lora_lr: float = 1e-3


@dataclass
class Stage2Spec:
    """LoRA on the attention projections + new gates trained fully; KL to the teacher + CE."""

    steps: int = 300
    lr: float = 1e-4
    gate_lr: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    ce_weight: float = 0.1
    temperature: float = 1.0
    lora: LoraSpec = field(default_factory=LoraSpec)


@dataclass
class EvalSpec:
    every: int = 100  # optimiser steps between held-out evaluations (0: only at stage ends)
    tokens: int = 65536
    passkey: list[int] = field(default_factory=list)
    passkey_n: int = 50


@dataclass
class Recipe:
    model: str
    data: DataSpec
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    stage1: Stage1Spec = field(default_factory=Stage1Spec)
    stage2: Stage2Spec = field(default_factory=Stage2Spec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    precision: str = "bf16"
    device: str = "auto"
    seed: int = 0
    output: str = "runs/distill"
    log_every: int = 10
    checkpoint_every: int = 100
    expects: dict = field(default_factory=dict)  # what the recipe should reach, e.g. {heldout_ppl_ratio: 1.2}
    source_path: str | None = None  # set by the loader


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist; give a YAML file (see recipes/ for examples)")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(root, yaml.MappingNode):
        raise UserError(f"{path}: a recipe is a YAML mapping of fields (model, data, stage1, ...)")
    for item in overrides:
        root = _apply_override(root, item)
    recipe = _build(Recipe, root, str(path), prefix="")
    recipe.source_path = str(path)
    _check(recipe, path)
    return recipe


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as a YAML file load_recipe reads back to an equal Recipe (saved with every run)."""

    def strip(obj):
        if not dataclasses.is_dataclass(obj):
            return obj
        hidden = _NOT_IN_RECIPES.get(type(obj), set()) | {"source_path"}
        return {f.name: strip(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in hidden}

    return yaml.safe_dump(strip(recipe), sort_keys=False)


def _apply_override(root: yaml.MappingNode, item: str) -> yaml.MappingNode:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. stage2.lr=1e-4")
    dotted, value = item.split("=", 1)
    node = root
    keys = dotted.strip().split(".")
    for depth, key in enumerate(keys):
        match = next((v for k, v in node.value if k.value == key), None)
        if depth == len(keys) - 1:
            try:
                new = yaml.compose(value) or yaml.ScalarNode("tag:yaml.org,2002:null", "null")
            except yaml.YAMLError as err:
                problem = getattr(err, "problem", err)
                raise UserError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
            new.start_mark = None  # reported as coming from --set, not from a line of the file
            node.value = [(k, v) for k, v in node.value if k.value != key]
            node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", key), new))
        elif match is None:
            child = yaml.MappingNode("tag:yaml.org,2002:map", [])
            node.value.append((yaml.ScalarNode("tag:yaml.org,2002:str", key), child))
            node = child
        elif isinstance(match, yaml.MappingNode):
            node = match
        else:
            raise UserError(f"--set {dotted}: {'.'.join(keys[: depth + 1])} is not a section")
    return root


def _where(source: str, node) -> str:
    return f"{source} (--set)" if node.start_mark is None else f"{source}:{node.start_mark.line + 1}"

# Filled in by the conversion pipeline, never by a recipe.
_NOT_IN_RECIPES = {ConversionConfig: {"source", "layers"}}


def _build(cls, node, source: str, prefix: str):
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{_where(source, node)}: {prefix.rstrip('.') or 'recipe'} must be a mapping")
    hints = typing.get_type_hints(cls)
    hidden = _NOT_IN_RECIPES.get(cls, set()) | {"source_path"}
    names = [f.name for f in dataclasses.fields(cls) if f.name not in hidden]
    values = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in names:
            raise UserError(f"{_where(source, key_node)}: unknown field '{prefix}{key}'; accepted: {', '.join(names)}")
        values[key] = _convert(hints[key], value_node, source, f"{prefix}{key}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise UserError(f"{_where(source, node)}: missing field '{prefix}{missing[0]}'")
    try:
        return cls(**values)
    except UserError as err:  # the dataclass's own value checks: say where the section is
        raise UserError(f"{_where(source, node)}: {prefix.rstrip('.')}: {err}") from None


def _convert(tp, node, source: str, name: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, node, source, prefix=f"{name}.")
    value = yaml.safe_load(yaml.serialize(node))
    if isinstance(value, str) and _accepts(tp, 1.5):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string; in a number field it means the number
            value = float(value)
        except ValueError:
            pass
    if _accepts(tp, value):
        return float(value) if tp is float and isinstance(value, int) and not isinstance(value, bool) else value
    raise UserError(f"{_where(source, node)}: field '{name}' must be {_describe(tp)}, got {value!r}")


def _accepts(tp, value) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(tp, str(tp))


def _check(recipe: Recipe, path: Path) -> None:
    if recipe.precision not in PRECISIONS:
        raise UserError(f"{path}: precision {recipe.precision!r} is not known; accepted: {', '.join(PRECISIONS)}")
    for stage in ("stage1", "stage2"):
        spec = getattr(recipe, stage)
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(spec, name) < (0 if name == "steps" else 1):
                raise UserError(f"{path}: {stage}.{name} must be {'>= 0' if name == 'steps' else '>= 1'}, got {getattr(spec, name)}")
    if not 0 <= recipe.data.heldout_fraction < 1:
        raise UserError(f"{path}: data.heldout_fraction must be in [0, 1), got {recipe.data.heldout_fraction}")
    if recipe.data.seq_len < 8:
        raise UserError(f"{path}: data.seq_len must be at least 8, got {recipe.data.seq_len}")
    base = path.parent
    for attr in ("train", "heldout"):
        value = getattr(recipe.data, attr)
        if value is not None and not value.startswith("pkg:") and not Path(value).is_absolute():
            setattr(recipe.data, attr, str((base / value).resolve()))

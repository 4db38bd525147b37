"""Swap each attention site found in the graph for a ResidualAttention layer, in the live model.

The model object is kept (only child modules change), so transformers' generate, caches,
save_pretrained and peft keep working on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import ConversionConfig
from ..errors import UserError
from ..init import initialise_gates, resolve_strategy
from ..inspect import decoder_layers
from ..layers import ResidualAttention
from .capture import CaptureError, Site, capture_sites
from .registry import MIXER_CLASSES, adapter_for, layer_weights, supported_summary


@dataclass
class LayerRow:
    index: int
    path: str
    old_class: str
    action: str  # "rla" / "rdn" (replaced) or "kept"
    adapter: str = ""
    params_before: int = 0
    params_after: int = 0


@dataclass
class RewriteReport:
    rows: list[LayerRow] = field(default_factory=list)
    source_kind: str = "softmax"
    gate_init: str = ""

    @property
    def replaced(self) -> list[LayerRow]:
        return [r for r in self.rows if r.action != "kept"]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_index(path: str, prefix: str | None, fallback: int) -> int:
    if prefix is not None and path.startswith(prefix + "."):
        head = path[len(prefix) + 1:].split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return fallback


def _by_class(sites: list[tuple[str, str]]) -> str:
    """Each class once, at its first path, with how many more layers have it (a line, not one path a layer)."""
    paths: dict[str, list[str]] = {}
    for class_name, path in sites:
        paths.setdefault(class_name, []).append(path)

    def more(n: int) -> str:
        return "" if n == 0 else " and 1 more layer" if n == 1 else f" and {n} more layers"

    return ", ".join(f"{name} (at {found[0]}{more(len(found) - 1)})" for name, found in paths.items())


def example_input_ids(model: nn.Module, length: int = 16) -> torch.Tensor:
    cfg = getattr(model, "config", None)
    # a composite model's vocabulary is its text config's (Gemma 3's multimodal class has none at the top)
    try:
        text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    except ValueError:  # transformers refuses a config with more than one text candidate: take the top
        text = cfg
    vocab = (getattr(text, "vocab_size", None) or getattr(cfg, "vocab_size", None) or getattr(model, "vocab_size", None)
             or 256)
    device = next(model.parameters()).device
    return torch.randint(0, int(vocab), (1, length), device=device)


def rewrite_model(model: nn.Module, config: ConversionConfig, example_ids: torch.Tensor | None = None,
                  progress=None) -> RewriteReport:
    """Replace the attention modules of ``model`` in place; fills ``config.layers`` and returns a report."""
    if example_ids is None:
        example_ids = example_input_ids(model)
    was_training = model.training
    model.eval()
    try:
        sites = capture_sites(model, example_ids, MIXER_CLASSES)
    except CaptureError as err:  # neither torch.export nor a real-tensor trace could: one line
        raise UserError(f"could not capture the model's graph ({err})") from None
    if not sites:
        named = [(type(m).__name__, path) for path, m in model.named_modules()
                 if "attention" in type(m).__name__.lower()]
        seen = (f" (it has {_by_class(named)}, whose traced forward calls no SDPA, softmax or Gated DeltaNet the "
                "rewriter takes)" if named else "")
        raise UserError(f"no attention the rewriter recognises in {type(model).__name__}{seen}; supported: "
                        f"{supported_summary()}")

    found = decoder_layers(model)
    prefix = found[0] if found else None
    num_layers = len(found[1]) if found else len(sites)
    hybrid = any(s.op == "mixer" for s in sites)
    report = RewriteReport(source_kind="gated-deltanet" if hybrid else "softmax")
    report.gate_init = resolve_strategy(config.gate_init, report.source_kind)
    bad = [i for i in config.keep_softmax if i >= num_layers]
    if bad:
        raise UserError(f"--keep-softmax: layer index {bad[0]} is out of range; the model has layers 0-{num_layers - 1}")

    modules = dict(model.named_modules())
    plan, unknown = [], []
    for order, site in enumerate(sites):
        module = modules[site.path]
        index = _layer_index(site.path, prefix, order)
        if index in config.keep_softmax or (hybrid and site.op != "mixer"):
            report.rows.append(LayerRow(index, site.path, site.class_name, "kept", params_before=_count(module),
                                        params_after=_count(module)))
            continue
        adapter = adapter_for(module, site)
        if adapter is None:
            unknown.append((site.class_name, site.path))
        plan.append((index, site, module, adapter))
    if unknown:
        raise UserError(f"attention the registry does not know: {_by_class(unknown)}; supported: {supported_summary()}")
    # every layer's arguments before any module is swapped: an adapter that refuses a layer (UserError naming
    # the reason) leaves the model as it was
    base_config = getattr(model, "config", None)
    plan = [(index, site, module, adapter, adapter.layer_kwargs(module, site, base_config))
            for index, site, module, adapter in plan]

    config.layers = []
    for index, site, module, adapter, kwargs in (progress(plan) if progress else plan):
        layer, spec = _build_layer(module, site, adapter, kwargs, index, config, report.gate_init)
        parent_path, _, child = site.path.rpartition(".")
        setattr(modules[parent_path] if parent_path else model, child, layer)
        config.layers.append(spec)
        report.rows.append(LayerRow(index, site.path, site.class_name, config.variant, adapter.name,
                                    _count(module), _count(layer)))
    report.rows.sort(key=lambda r: r.index)
    model.train(was_training)
    return report


def _build_layer(module, site: Site, adapter, kwargs, index, config: ConversionConfig, strategy: str):
    kwargs = dict(kwargs)
    if adapter.source_kind == "softmax":
        kwargs["rope"] = kwargs.get("rope", False) and config.keep_rope
        # without an output norm, the op's output scale must meet what the reused o_proj expects: a gain learns it
        kwargs.update(conv_size=config.conv_size, output_gate=config.output_gate, output_scale=not config.output_gate)
    kwargs.update(variant=config.variant, clip=config.clip, residual=config.residual, layer_idx=index,
                  call_style=adapter.call_style, backend=config.backend)
    reference = next(module.parameters())
    # recompute_states is training-only (config.TRAINING_ONLY): the live layer gets it, the spec (which exports
    # store and rebuild layers from) does not
    layer = ResidualAttention(**kwargs, recompute_states=config.recompute_states)
    weights = layer_weights(adapter, module, kwargs)
    missing, unexpected = layer.load_state_dict(weights, strict=False)
    if unexpected:
        raise RuntimeError(f"adapter {adapter.name} produced weights the layer does not have: {unexpected}")
    reused = {name.split(".")[0] for name in weights}
    if config.conv_size and adapter.source_kind == "softmax":
        with torch.no_grad():  # start each new conv as the identity: it only passes the current token
            for name in ("q", "k", "v"):
                conv = getattr(layer, f"{name}_conv1d")
                conv.weight.zero_()
                conv.weight[..., -1] = 1.0
    initialise_gates(layer, strategy, reused, config.seed)
    layer.reused_parameters = sorted(reused)  # distillation trains the rest first (rla_convert.distill)
    layer.to(device=reference.device, dtype=reference.dtype)
    spec = {"path": site.path, "source_class": site.class_name, "adapter": adapter.name, "kwargs": kwargs}
    return layer, spec

"""Describe a causal LM's architecture: sizes and the attention kind of each layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

# Child-module names under which decoder layers keep their token mixer, in transformers and fla.
_MIXER_NAMES = ("self_attn", "linear_attn", "attn", "attention", "mixer", "token_mixer")


@dataclass
class LayerInfo:
    index: int
    module_name: str
    class_name: str
    kind: str  # "softmax", "gated-deltanet", "rla", "rdn", "gdn" (our baseline layer), or "unknown"
    conversion: str = ""  # rewrite.registry.verdict: "converts (ADAPTER)", "refused: ...", "not known", "converted"


def _kind_of(module: nn.Module) -> str:
    explicit = getattr(module, "attention_kind", None)
    if isinstance(explicit, str):
        return explicit
    name = type(module).__name__.lower()
    if "gateddeltanet" in name or "gated_deltanet" in name:
        return "gated-deltanet"
    if "attention" in name:
        return "softmax"
    return "unknown"


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of decoder blocks: the longest ModuleList in the model."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def describe_layers(model: nn.Module) -> list[LayerInfo]:
    from .rewrite.registry import verdict

    found = decoder_layers(model)
    if found is None:
        return []
    prefix, layers = found
    infos = []
    for i, layer in enumerate(layers):
        for child in _MIXER_NAMES:
            mixer = getattr(layer, child, None)
            if isinstance(mixer, nn.Module):
                kind, path = _kind_of(mixer), f"{prefix}.{i}.{child}"
                ours = kind in ("rla", "rdn", "gdn")
                conversion = "converted" if ours else verdict(mixer, path, getattr(model, "config", None))
                infos.append(LayerInfo(i, path, type(mixer).__name__, kind, conversion))
                break
        else:
            infos.append(LayerInfo(i, f"{prefix}.{i}", type(layer).__name__, "unknown"))
    return infos


def architecture_summary(model: nn.Module) -> dict:
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(text_cfg, "num_attention_heads", None)
    hidden = getattr(text_cfg, "hidden_size", None)
    head_dim = getattr(text_cfg, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if getattr(text_cfg, "kv_lora_rank", None):  # MLA: config.head_dim is the RoPE part alone; q/k heads hold both
        head_dim = text_cfg.qk_nope_head_dim + text_cfg.qk_rope_head_dim
    return {
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "class": type(model).__name__,
        "layers": getattr(text_cfg, "num_hidden_layers", None),
        "hidden_size": hidden,
        "heads": heads,
        "kv_heads": getattr(text_cfg, "num_key_value_heads", heads),
        "head_dim": head_dim,
        "vocab_size": getattr(text_cfg, "vocab_size", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }

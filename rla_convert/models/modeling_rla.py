"""Converted models as transformers models.

A converted model is an instance of ``RLA<Base>`` (e.g. RLALlamaForCausalLM): a subclass of the base
architecture's class whose ``__init__`` builds the base model from an RLAConfig and then puts a
ResidualAttention layer at every path listed in ``config.conversion["layers"]``. Everything else
(forward, generate, tied weights, save_pretrained, peft) is the base class's own. ``RLAForCausalLM``
is the name the Auto classes and ``auto_map`` know: it resolves the base class from the config and
hands over. This file is shipped with exports and must only import torch / transformers (and the
files shipped beside it).
"""
from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from ..layers.residual_attention import ResidualAttention
from .cache import REAL_TOKENS, install_state_layers
from .configuration_rla import RLAConfig, import_object

_CONVERTED_CLASSES: dict[type, type] = {}


def install_layers(model, layer_specs: list[dict]) -> None:
    """Replace the module at each spec's ``path`` with a ResidualAttention built from its ``kwargs``."""
    for spec in layer_specs:
        parent_path, _, child = spec["path"].rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, ResidualAttention(**spec["kwargs"]))


class ConvertedModelMixin:
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        install_layers(self, config.conversion.get("layers", []))

    def _forward_numbering_real_tokens(self, signature, *args, **kwargs):
        # Without position_ids the base model numbers every column of the mask, padding included. Softmax attention
        # does not mind (RoPE is relative there), but a converted layer applies SiLU and an L2 norm after RoPE, so
        # its output depends on the absolute positions: a left-padded row would be numbered from its first pad.
        # Number the real tokens from the mask instead, as generate() does. With a cache, the converted layers are
        # also told which current tokens are real (a static cache's 4-D mask does not have them last).
        base_forward = super(ConvertedModelMixin, self).forward
        handed = kwargs.pop(REAL_TOKENS, None)  # from prepare_inputs_for_generation, when it made a 4-D mask
        numbers = not (kwargs.get("position_ids") is not None or not self._takes_position_ids or not _uses_rope(self))
        if not numbers and handed is None and not any(kwargs.get(name) is not None for name in _CACHE_ARGUMENTS):
            return base_forward(*args, **kwargs)  # generate() and the graphed decode pass position_ids by name
        bound = signature.bind_partial(self, *args, **kwargs)  # the mask and the ids may come by position
        named = bound.arguments
        length = _current_length(named)
        flat = _flat_mask(named.get("attention_mask"), length)
        if numbers and named.get("position_ids") is None and flat is not None:
            named["position_ids"] = _real_token_positions(flat, length)
        extra = named.get(_var_keyword(signature), {})
        cache = next((c for c in (*(named.get(n) for n in _CACHE_ARGUMENTS), *(extra.get(n) for n in _CACHE_ARGUMENTS))
                      if c is not None), None)
        real = None
        if getattr(cache, "layers", None) is not None:
            real = handed if handed is not None or flat is None else _real_token_mask(flat, length)
        if real is None:
            return base_forward(*bound.args[1:], **bound.kwargs)
        setattr(cache, REAL_TOKENS, real)
        try:
            return base_forward(*bound.args[1:], **bound.kwargs)
        finally:
            setattr(cache, REAL_TOKENS, None)  # only this call's layers may read it

    def _prepare_inputs_handing_real_tokens(self, *args, **kwargs):
        # For a static cache generate() turns the 2-D mask into a 4-D one as wide as the cache, which tells neither
        # the real tokens' positions nor which current tokens are real: both are read off the 2-D mask here.
        cache = next((kwargs[n] for n in _CACHE_ARGUMENTS if kwargs.get(n) is not None), None)
        if cache is not None:
            install_state_layers(cache, _converted_layer_indices(self))
        given = kwargs.get("attention_mask")
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        length = _current_length(inputs)
        flat = _flat_mask(given, length)
        if cache is None or flat is None or inputs.get("attention_mask") is given:
            return inputs
        if inputs.get("position_ids") is None and self._takes_position_ids and _uses_rope(self):
            inputs["position_ids"] = _real_token_positions(flat, length)
        inputs[REAL_TOKENS] = _real_token_mask(flat, length)
        return inputs


_CACHE_ARGUMENTS = ("cache", "past_key_values")  # transformers 5.24+, and before


def _var_keyword(signature) -> str | None:
    return next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)


def _converted_layer_indices(model) -> list[int]:
    indices = getattr(model, "_rla_layer_indices", None)
    if indices is None:
        indices = sorted({m.layer_idx for m in model.modules() if isinstance(m, ResidualAttention)})
        model._rla_layer_indices = indices  # the layers are fixed at construction
    return indices


def _uses_rope(model) -> bool:
    flag = getattr(model, "_rla_rope_layers", None)
    if flag is None:
        flag = any(getattr(m, "rope", False) for m in model.modules() if isinstance(m, ResidualAttention))
        model._rla_rope_layers = flag  # the layers are fixed at construction
    return flag


def _current_length(inputs: dict) -> int | None:
    """How many tokens this call brings (input_ids', else inputs_embeds' length), None if neither is there."""
    tokens = inputs.get("input_ids")
    tokens = inputs.get("inputs_embeds") if tokens is None else tokens
    return None if tokens is None else tokens.shape[1]


def _flat_mask(mask, length):
    """``mask`` if it is the 2-D mask over the cached and the ``length`` current tokens, which says where the real
    tokens are; else None (a dict of masks per layer type, a flex BlockMask, a 4-D mask: left to the base model)."""
    if not isinstance(mask, torch.Tensor) or length is None or mask.dim() != 2 or mask.shape[1] < length:
        return None
    return mask


def _real_token_mask(flat, length):
    """[B, length] bool: which current tokens the 2-D mask says are real."""
    return flat[:, -length:].bool()


def _real_token_positions(flat, length):
    """Each current token's index among the real tokens of its row (the 2-D mask covers the cached tokens too);
    pads get 0."""
    return (flat.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]


def converted_class(base_class: type) -> type:
    """``RLA<Base>``: the base class with its attention modules replaced at construction."""
    if base_class not in _CONVERTED_CLASSES:
        signature = inspect.signature(base_class.forward)

        def forward(self, *args, **kwargs):
            return self._forward_numbering_real_tokens(signature, *args, **kwargs)

        def prepare_inputs_for_generation(self, *args, **kwargs):
            return self._prepare_inputs_handing_real_tokens(*args, **kwargs)

        # generate() reads the forward's parameters (position_ids, logits_to_keep, ...) to choose what to pass, and
        # prepare_inputs_for_generation's to know what it takes (inputs_embeds: refused where the signature lacks it)
        forward.__signature__, forward.__doc__ = signature, base_class.forward.__doc__
        prepare_inputs_for_generation.__signature__ = inspect.signature(base_class.prepare_inputs_for_generation)
        _CONVERTED_CLASSES[base_class] = type(
            f"RLA{base_class.__name__}", (ConvertedModelMixin, base_class),
            {"config_class": RLAConfig, "__module__": __name__, "forward": forward,
             "prepare_inputs_for_generation": prepare_inputs_for_generation,
             "_takes_position_ids": "position_ids" in signature.parameters},
        )
    return _CONVERTED_CLASSES[base_class]


def _class_for(config: RLAConfig) -> type:
    return converted_class(import_object(config.base_classes["model"]))


class RLAForCausalLM(PreTrainedModel):
    """Entry point for AutoModelForCausalLM: dispatches to ``RLA<Base>`` for the config's base class."""

    config_class = RLAConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        if not isinstance(config, RLAConfig):
            config = RLAConfig.from_pretrained(pretrained_model_name_or_path)
        return _class_for(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return _class_for(config)._from_config(config, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        return _class_for(config)._from_config(config, **kwargs)

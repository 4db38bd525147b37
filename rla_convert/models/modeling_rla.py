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

from transformers import PreTrainedModel

from ..layers.residual_attention import ResidualAttention
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


def converted_class(base_class: type) -> type:
    """``RLA<Base>``: the base class with its attention modules replaced at construction."""
    if base_class not in _CONVERTED_CLASSES:
        _CONVERTED_CLASSES[base_class] = type(
            f"RLA{base_class.__name__}", (ConvertedModelMixin, base_class),
            {"config_class": RLAConfig, "__module__": __name__},
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

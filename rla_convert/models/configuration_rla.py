"""RLAConfig: the config of a converted checkpoint (model_type "rla").

It carries every attribute of the base model's config (so the base architecture's own modules build
from it unchanged), the base config itself (``base_config``), where the base classes live
(``base_classes``) and the conversion (``conversion``: rla_convert.config.ConversionConfig as a dict,
including each replaced module's path and layer arguments). This file is shipped with exports and
must only import torch / transformers.
"""
from __future__ import annotations

import importlib

from transformers import PretrainedConfig

# Keys of the base config that describe the base checkpoint rather than the model's shape.
_NOT_INHERITED = ("model_type", "architectures", "auto_map", "transformers_version", "base_config",
                  "conversion", "base_classes")


def _inherited(fields: dict) -> dict:
    """The fields of a config dict that the base config class takes."""
    return {k: v for k, v in fields.items() if k not in _NOT_INHERITED}


def import_object(path: str):
    """``"package.module:Name"`` -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class RLAConfig(PretrainedConfig):
    model_type = "rla"

    def __init__(self, base_config: dict | None = None, conversion: dict | None = None,
                 base_classes: dict | None = None, **kwargs):
        base = dict(base_config or {})
        merged = _inherited(base)
        merged.update(kwargs)
        self.base_config = base
        self.conversion = dict(conversion or {})
        self.base_classes = dict(base_classes or {})
        try:
            super().__init__(**merged)  # which validates by PreTrainedConfig's rules once every field is set
        except Exception as err:  # noqa: BLE001 (huggingface_hub's error class; this file imports torch/transformers)
            self._unless_the_base_config_validates(err)
        # A composite model's sub-configs (text_config, vision_config...) as the base class makes them, config objects:
        # copied flat they were dicts, and transformers asks them for get_text_config() (generate's cache, Gemma 3's
        # masks) and the base model's __init__ builds its sub-models from them.
        base_object = self._base()
        for key in self.sub_configs:
            self.__dict__[key] = getattr(base_object, key)

    def validate(self):
        """PreTrainedConfig's rules (save_pretrained runs them too), or the base config class's where those fail."""
        try:
            super().validate()
        except Exception as err:  # noqa: BLE001
            self._unless_the_base_config_validates(err)

    def _unless_the_base_config_validates(self, err):
        """Re-raise ``err`` unless it is a validation error and the base config class builds from the current fields:
        a class may widen the generic rules (Nemotron-H's "mlp" layer type) and checks those fields by its own (a
        field its rules reject raises from here, as the base class would)."""
        base_class = self._base_class()
        if type(err).__name__ != "StrictDataclassClassValidationError" or base_class is None:
            raise err
        base_class(**_inherited(PretrainedConfig.to_dict(self)))

    def _base_class(self):
        """The base config class, or None when it is not known yet."""
        config_path = self.__dict__.get("base_classes", {}).get("config")
        return import_object(config_path) if config_path else None

    def _base(self):
        """The base config class built from ``base_config`` (once), or None when the classes are not known yet."""
        base = self.__dict__.get("_base_object")
        if base is None:
            base_class = self._base_class()
            if base_class is None or "base_config" not in self.__dict__:
                return None
            base = base_class(**_inherited(self.__dict__["base_config"]))
            self.__dict__["_base_object"] = base
        return base

    @property
    def sub_configs(self):
        """The base config's sub-config keys that it holds as configs (transformers reads ``config.sub_configs`` to
        set attention implementations on them). An instance property where PretrainedConfig has a class one: what
        they are depends on the base class of this instance."""
        base = self._base()
        if base is None:
            return {}
        return {key: cls for key, cls in type(base).sub_configs.items()
                if isinstance(getattr(base, key, None), PretrainedConfig)}

    def __getattr__(self, name):
        """Attributes the base config class derives (aliases such as GPT-2's hidden_size -> n_embd)."""
        if name.startswith("_") or "base_config" not in self.__dict__:
            raise AttributeError(name)
        base = self._base()
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def to_dict(self):
        """With ``base_config`` brought up to date from the live values (a sub-config or vocabulary changed after the
        conversion, by resize_token_embeddings say): the reloaded model builds its modules from ``base_config``."""
        out = super().to_dict()
        out.pop("_base_object", None)
        out["base_config"] = {key: out[key] if key in out and key not in _NOT_INHERITED else value
                              for key, value in out.get("base_config", {}).items()}
        return out

    @classmethod
    def from_base(cls, base_config, conversion: dict, base_model_class: type) -> "RLAConfig":
        base = base_config.to_dict()
        classes = {"model": f"{base_model_class.__module__}:{base_model_class.__name__}",
                   "config": f"{type(base_config).__module__}:{type(base_config).__name__}"}
        config = cls(base_config=base, conversion=conversion, base_classes=classes)
        for key in config.sub_configs:  # the live model's sub-models hold these very objects: one config, not two
            config.__dict__[key] = getattr(base_config, key)
        # Not in to_dict(): the kernels the base model dispatches to (attention, MoE experts), the sub-configs' own
        # included. Without them the converted model fell back to the eager experts loop, slower and not bit-equal to
        # its reloaded self.
        for name in ("_attn_implementation", "_experts_implementation"):
            chosen = {"": getattr(base_config, name, None)}
            chosen.update({key: getattr(getattr(base_config, key), name, None) for key in config.sub_configs})
            setattr(config, name, chosen)
        return config

"""HF config/model classes for converted checkpoints, the decoding cache, export and loading.

Kept import-light: the layer imports ``models.cache`` and must not pull the modeling code in with it.
"""

_registered = False


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM load converted checkpoints (model_type "rla")."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_rla import RLAConfig
    from .modeling_rla import RLAForCausalLM

    AutoConfig.register(RLAConfig.model_type, RLAConfig, exist_ok=True)
    AutoModelForCausalLM.register(RLAConfig, RLAForCausalLM, exist_ok=True)
    _registered = True

"""rla-convert: turn softmax-attention and Gated DeltaNet checkpoints into RLA / RDN models."""
__version__ = "0.1.0"

# Converted checkpoints (model_type "rla") load through AutoConfig / AutoModelForCausalLM once the
# toolkit is imported: register the classes now (rla_convert/models).
from .models import register_auto_classes as _register_auto_classes  # noqa: E402

_register_auto_classes()

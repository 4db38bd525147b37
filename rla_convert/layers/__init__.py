"""RLA / RDN attention modules (see residual_attention.py)."""
from .residual_attention import ResidualAttention, set_recompute_states

__all__ = ["ResidualAttention", "set_recompute_states"]

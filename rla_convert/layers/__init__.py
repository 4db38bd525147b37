"""RLA / RDN attention modules (see residual_attention.py)."""
from .residual_attention import ResidualAttention

__all__ = ["ResidualAttention"]

from .naive import naive_recurrent_rdn
from .torch_chunk import chunk_rdn_torch

__all__ = ["naive_recurrent_rdn", "chunk_rdn_torch"]

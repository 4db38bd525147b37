from .naive import naive_recurrent_rla
from .torch_chunk import chunk_rla_torch

__all__ = ["naive_recurrent_rla", "chunk_rla_torch"]

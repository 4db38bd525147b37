"""rla_kernels: the RLA and RDN ops (imported as ``rla_kernels``; the folder is ``kernels/``).

State layout, once for every backend: a state is the pair ``(S, R)``, each ``[N, H, K, V]`` in
float32 (N = batch size, or number of sequences with ``cu_seqlens``), holding the transpose of the
paper's d_v x d_k matrices, as fla does.
"""
from .rdn import naive_recurrent_rdn
from .rla import naive_recurrent_rla

__all__ = ["naive_recurrent_rla", "naive_recurrent_rdn"]

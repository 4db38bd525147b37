"""rla_kernels: the RLA and RDN ops (imported as ``rla_kernels``; the folder is ``kernels/``).

``rla(...)`` and ``rdn(...)`` are the public ops (``api.py``); the backend is chosen in ``backend.py``.
State layout, once for every backend: a state is the pair ``(S, R)``, each ``[N, H, K, V]`` in
float32 (N = batch size, or number of sequences with ``cu_seqlens``), holding the transpose of the
paper's d_v x d_k matrices, as fla does.
"""
if __name__ == "rla_kernels":
    from .api import rdn, rla
    from .backend import BACKENDS, BackendUnavailableError, choose_backend
    from .rdn import chunk_rdn_torch, naive_recurrent_rdn
    from .rla import chunk_rla_torch, naive_recurrent_rla

    __all__ = [
        "rla", "rdn", "BACKENDS", "BackendUnavailableError", "choose_backend",
        "chunk_rla_torch", "chunk_rdn_torch", "naive_recurrent_rla", "naive_recurrent_rdn",
    ]
# Otherwise this folder was found as `kernels`: run from a checkout, the current directory is on sys.path,
# and `kernels` is the name of Hugging Face's hub package that transformers imports to probe for it. The
# module stays empty then (no version: transformers reads it as not installed), so the torch.library ops
# are not registered a second time, bound to a second copy of every module.

"""rla_kernels: the RLA and RDN ops (imported as ``rla_kernels``; the folder is ``kernels/``).

``rla(...)`` and ``rdn(...)`` are the public ops (``api.py``); the backend is chosen in ``backend.py``.
State layout, once for every backend: a state is the pair ``(S, R)``, each ``[N, H, K, V]`` in
float32 (N = batch size, or number of sequences with ``cu_seqlens``), holding the transpose of the
paper's d_v x d_k matrices, as fla does.
"""
if __name__ == "rla_kernels":
    from .api import rdn, rla
    from .compile_log import install_from_env as _log_compiles
    from .backend import BACKENDS, BackendUnavailableError, choose_backend
    from .rdn import chunk_rdn_torch, naive_recurrent_rdn
    from .rla import chunk_rla_torch, naive_recurrent_rla

    __all__ = [
        "rla", "rdn", "BACKENDS", "BackendUnavailableError", "choose_backend",
        "chunk_rla_torch", "chunk_rdn_torch", "naive_recurrent_rla", "naive_recurrent_rdn",
    ]
    _log_compiles()  # RLA_KERNELS_COMPILE_LOG=FILE: every Triton kernel this process compiles, for a later warm-up
else:
    # This folder was found as `kernels`: run from a checkout, the current directory is on sys.path, and
    # `kernels` is the name of Hugging Face's hub package, which transformers probes for and (from 5.25, which
    # requires it) imports. Where that package is installed, it takes this module's place (a module may replace
    # its own sys.modules entry while it runs: the import returns the entry); else this module stays empty (no
    # version: transformers reads it as not installed). Either way the torch.library ops are not registered a
    # second time, bound to a second copy of every module.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _checkout = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.realpath(p or _os.getcwd()) != _checkout]
    _spec = _machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is not None:
        _hub = _util.module_from_spec(_spec)
        _sys.modules[__name__] = _hub
        _spec.loader.exec_module(_hub)

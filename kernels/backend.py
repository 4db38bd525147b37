"""Which implementation runs an op: the one place that decides.

- ``torch``: the chunked PyTorch code (``*/torch_chunk.py``), any device, differentiable by autograd; when
  decoding (``is_decode``) it steps token by token with the oracle's step instead.
- ``triton``: the Triton kernels (``*/chunk.py`` for training/prefill, ``*/fused_recurrent.py`` for decode).
- ``naive``: the token-by-token oracles (``*/naive.py``), for checking only.

Default: triton for CUDA tensors when triton imports, torch otherwise. The environment variable
``RLA_KERNELS_BACKEND`` replaces that default; an explicit ``backend=`` argument beats both.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "naive")
ENV_VAR = "RLA_KERNELS_BACKEND"
# Up to this many tokens per sequence, a call that starts from a state and needs no gradient is
# decoding: the fused recurrent kernel (one pass over the tokens) beats the chunked one.
DECODE_MAX_TOKENS = 16


SPLIT_ASM_VAR = "RLA_KERNELS_SPLIT_ASM"


def split_asm_requested() -> bool:
    """``RLA_KERNELS_SPLIT_ASM``: 1 or unset asks the Triton kernels for the inline-PTX bf16 split
    (triton_utils.SPLIT_ASM; on by default since its whole float64 check passed, H100, 2026-12-05), 0 for Triton's
    casts; any other value is a ValueError (a "false" read as on would time the other path unnoticed)."""
    value = os.environ.get(SPLIT_ASM_VAR, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable {SPLIT_ASM_VAR} must be 1 or unset (on), or 0 (off); got {value!r}")
    return value != "0"


class BackendUnavailableError(RuntimeError):
    """The chosen backend cannot run here (triton missing, or its kernels not written yet)."""


# Looked up once, without importing triton (slow) and outside any torch.compile trace.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_INSTALLED


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose_backend(requested: str | None, device: torch.device) -> str:
    """Resolve ``backend=`` (or the environment / default) for tensors on ``device``."""
    source = "backend"
    if requested is None:
        requested = os.environ.get(ENV_VAR) or None
        source = f"environment variable {ENV_VAR}"
    if requested is None:
        return "triton" if device.type == "cuda" and triton_importable() else "torch"
    if requested not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or unset; got {requested!r}")
    if requested == "triton":
        if not triton_importable():
            raise BackendUnavailableError(f"{source}='triton' but triton does not import here; use 'torch'")
        if device.type != "cuda" and not _triton_interpreting():
            raise BackendUnavailableError(
                f"{source}='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); got {device}")
    return requested


def needs_grad(tensors) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def is_decode(total_tokens: int, num_sequences: int, has_initial_state: bool, needs_grad: bool,
              max_tokens: int = DECODE_MAX_TOKENS) -> bool:
    """Short calls continuing from a state without autograd go to the fused recurrent kernel (``max_tokens``:
    another kernel family's threshold, as rla_convert's gdn baseline passes fla's)."""
    per_sequence = total_tokens / max(num_sequences, 1)
    return has_initial_state and not needs_grad and per_sequence <= max_tokens


@functools.lru_cache(maxsize=None)
def triton_function(variant: str, module: str, name: str):
    """``rla_kernels.<variant>.<module>.<name>``, imported on first use, or a clear error if absent."""
    path = f"{__package__}.{variant}.{module}"
    try:
        mod = importlib.import_module(path)
    except ImportError as error:
        raise BackendUnavailableError(f"the triton backend needs {path}, which does not import here ({error}); "
                                      "use backend='torch'") from error
    fn = getattr(mod, name, None)
    if fn is None:
        raise BackendUnavailableError(f"the triton backend needs {path}.{name}, which is not there yet; "
                                      "use backend='torch'")
    return fn

"""The one rule for a device the user names (``--device``, a recipe's ``device``)."""
from __future__ import annotations

from .errors import UserError

ACCEPTED = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str, option: str = "--device"):
    """auto (CUDA when torch sees one), cpu, or cuda[:N] (refused without a GPU or past the last one)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{option} {name!r} is not a device; accepted: {ACCEPTED}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {name!r}: only CPU and CUDA devices are supported; accepted: {ACCEPTED}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {name} asked for a GPU, but torch sees no CUDA device here; accepted: auto, cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device

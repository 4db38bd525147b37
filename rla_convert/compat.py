"""Workarounds for the libraries we sit on, each with the reason it exists.

transformers 5.24 renamed a forward's cache argument and output from ``past_key_values`` to ``cache``
(the old names log a deprecation warning); the GPU machine has 5.17, which knows only the old ones:
``cache_argument`` and ``output_cache`` pick the one the installed version has.

transformers (5.2x) binds Qwen3-Next's gated delta rule to fla's Triton kernels whenever fla is importable,
whatever the device: on a machine without a GPU, where we install fla as a dependency, a Qwen3-Next
teacher then fails inside Triton ("0 active drivers"). We route calls on CPU tensors to the reference
PyTorch function that transformers keeps underneath its wrapper.
"""
from __future__ import annotations

import functools
import inspect
import sys

# module -> functions whose accelerated implementation needs CUDA tensors
_DEVICE_BOUND = {
    "transformers.models.qwen3_next.modeling_qwen3_next": ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"),
}


def _first_tensor(args, kwargs):
    import torch

    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)


def _device_aware(accelerated):
    reference = inspect.unwrap(accelerated)
    if reference is accelerated:
        return accelerated

    @functools.wraps(reference)
    def call(*args, **kwargs):
        first = _first_tensor(args, kwargs)
        return (accelerated if first is None or first.is_cuda else reference)(*args, **kwargs)

    call._rla_device_aware = True
    return call


def patch_device_bound_kernels() -> None:
    """Patch the modules already imported (importing them all would cost seconds); call after loading a model."""
    for module_name, names in _DEVICE_BOUND.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in names:
            fn = getattr(module, name, None)
            if fn is not None and not getattr(fn, "_rla_device_aware", False):
                setattr(module, name, _device_aware(fn))


def cache_argument(model) -> str:
    """The keyword a model's forward takes its cache by: ``cache`` from transformers 5.24, ``past_key_values``
    before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The cache a forward returned: ``out.cache`` from transformers 5.24, ``out.past_key_values`` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values

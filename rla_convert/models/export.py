"""Write a converted model as a transformers checkpoint directory, atomically.

DIR gets safetensors weights, config.json (an RLAConfig: base architecture + every conversion
option, with ``auto_map``), generation_config.json, the tokenizer, and the modeling code: this
package's configuration/modeling/cache files, the layer, and the PyTorch kernel files from
``kernels/`` copied verbatim except for their import lines, which are rewritten to the flat
layout transformers' remote-code loader expects (``from .name import ...``). No kernel math is
written here: the shipped kernel is the kernel source itself.

Atomic: everything is written to a hidden temporary directory beside DIR and renamed into place
at the end, so a crash leaves no half-written DIR.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError

# Shipped modules: qualified name -> flat file name (without .py) in the export.
SHIPPED = {
    "rla_convert.models.configuration_rla": "configuration_rla",
    "rla_convert.models.modeling_rla": "modeling_rla",
    "rla_convert.models.cache": "rla_cache",
    "rla_convert.layers.residual_attention": "residual_attention",
    "rla_kernels.residual": "rla_kernels_residual",
    "rla_kernels.backend": "rla_kernels_backend",
    "rla_kernels.rla.naive": "rla_kernels_rla_naive",
    "rla_kernels.rdn.naive": "rla_kernels_rdn_naive",
    "rla_kernels.rla.torch_chunk": "rla_kernels_rla_torch_chunk",
    "rla_kernels.rdn.torch_chunk": "rla_kernels_rdn_torch_chunk",
    "rla_convert.layers.gdn_op": "gdn_op",
}
# The layer's kernel selector is replaced by this file (flat name "ops" is what the layer imports).
SHIPPED_OPS = '''"""Kernel for the exported model: rla_kernels' chunked PyTorch backend, shipped beside this file.

It is what ``rla_kernels.rla`` / ``rdn`` run on CPU, so a reloaded model computes the same bits there.
The gdn baseline ships its own selector (gdn_op.py: fla on CUDA when installed, else transformers' reference).
"""
from .rla_kernels_rla_torch_chunk import chunk_rla_torch
from .rla_kernels_rdn_torch_chunk import chunk_rdn_torch
from .gdn_op import gated_delta_rule

_OPS = {"rla": chunk_rla_torch, "rdn": chunk_rdn_torch, "gdn": gated_delta_rule}


def kernel_op(variant, backend=None):
    op = _OPS[variant]
    # the layer's debug mode asks for value checks, which only rla_kernels has: accepted, not run, here; and
    # recompute_states (keep the Triton walk for the backward) means nothing to this backend: accepted, ignored
    return lambda *args, validate=False, recompute_states=True, **kwargs: op(*args, **kwargs)


def prep_ops():  # the layer's PyTorch ops serve the export everywhere
    return None
'''
AUTO_MAP = {"AutoConfig": "configuration_rla.RLAConfig", "AutoModelForCausalLM": "modeling_rla.RLAForCausalLM"}

_FROM_IMPORT = re.compile(r"^(\s*)from\s+(\.*)([\w.]*)\s+import\s+", re.MULTILINE)


def _resolve(module: str, dots: str, name: str) -> str:
    if not dots:
        return name
    package = module.rsplit(".", len(dots))[0]
    return f"{package}.{name}" if name else package


def flatten_imports(source: str, module: str, mapping: dict[str, str]) -> str:
    """Rewrite ``from X import`` lines of ``module``'s source to the flat shipped names."""

    def replace(match):
        indent, dots, name = match.groups()
        target = _resolve(module, dots, name)
        if target in mapping:
            return f"{indent}from .{mapping[target]} import "
        if dots or target.split(".")[0] in ("rla_convert", "rla_kernels"):
            raise RuntimeError(f"{module} imports {target}, which is not shipped with exports; add it to SHIPPED")
        return match.group(0)

    return _FROM_IMPORT.sub(replace, source)


def write_modeling_code(directory: Path) -> list[str]:
    mapping = dict(SHIPPED)
    mapping["rla_convert.layers.ops"] = "ops"
    written = []
    for module, flat in SHIPPED.items():
        path = Path(importlib.import_module(module).__file__)
        text = flatten_imports(path.read_text(), module, mapping)
        (directory / f"{flat}.py").write_text(text)
        written.append(f"{flat}.py")
    (directory / "ops.py").write_text(SHIPPED_OPS)
    return written + ["ops.py"]


def _umask() -> int:
    """The process umask, read without setting it where Linux says it (setting it, even back, races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not force:
        raise UserError(f"output directory {out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a directory")
    return out


def cast_for_export(model, dtype) -> None:
    """Cast ``model``'s floating parameters and buffers to ``dtype`` in place, but those that from_pretrained would
    load as float32 at that dtype (a class's ``_keep_in_fp32_modules_strict`` at bfloat16 and float16, its
    ``_keep_in_fp32_modules`` at float16 too; patterns searched in the full name, ``*`` any run, as transformers
    does: MoE routers' "gate.weight"): saved rounded, they would lose what they keep. Every (sub-)config then names
    ``dtype`` (transformers sets only the top level's at save)."""
    import torch

    patterns = set()
    if dtype == torch.float16:
        patterns |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if dtype in (torch.float16, torch.bfloat16):
        patterns |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    kept = re.compile("|".join(p.replace("*", ".*") for p in sorted(patterns))) if patterns else None
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not (kept and kept.search(name)):
            tensor.data = tensor.data.to(dtype)
    _name_dtype(model.config, dtype)


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> "bfloat16", as configs and messages spell a dtype."""
    return str(dtype).removeprefix("torch.")


def _name_dtype(config, dtype) -> None:
    """Set the dtype entry of a config, of its sub-configs and of the config dicts it holds (RLAConfig's base_config)."""
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        config.dtype = dtype
        for value in list(vars(config).values()):
            _name_dtype(value, dtype)
    elif isinstance(config, dict):
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = dtype_name(dtype)
        for value in config.values():
            _name_dtype(value, dtype)


def save_converted(model, tokenizer, out_dir: str | os.PathLike, force: bool = False, dtype=None) -> Path:
    """Write ``model`` (a converted RLA<Base> model) and ``tokenizer`` to ``out_dir`` atomically; with ``dtype``, the
    model cast to it first, in place (cast_for_export)."""
    from .configuration_rla import RLAConfig

    out = check_output_dir(out_dir, force)
    if not isinstance(getattr(model, "config", None), RLAConfig):
        raise UserError("only transformers models can be exported; this converted model has no RLAConfig")
    if dtype is not None:
        cast_for_export(model, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: the checkpoint gets a plain mkdir's mode
        model.config.auto_map = dict(AUTO_MAP)
        model.config.architectures = ["RLAForCausalLM"]
        # By the converted class's own parameter names: transformers would otherwise write a model it loaded from
        # disk under the checkpoint's names (its load-time renamings reverted: Mixtral's fused experts split back,
        # GPT-NeoX's head renamed), which the converted class, another model type, would not rename again on load:
        # those weights came back freshly initialised (2026-12-05, ~20 architectures, Mixtral and GPT-NeoX among them).
        keep_names = ({"save_original_format": False}
                      if "save_original_format" in inspect.signature(model.save_pretrained).parameters else {})
        model.save_pretrained(tmp, safe_serialization=True, **keep_names)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_modeling_code(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

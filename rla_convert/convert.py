"""The conversion pipeline: rewrite a model's attention, initialise the gates, measure the drift,
and make the result a transformers model that saves and loads as an RLA checkpoint.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from rla_kernels.backend import BackendUnavailableError

from .config import ConversionConfig
from .errors import UserError
from .rewrite import RewriteReport, rewrite_model
from .rewrite.rewriter import example_input_ids


@dataclass
class Drift:
    relative_error: float  # ||logits_new - logits_old|| / ||logits_old||
    top1_agreement: float  # fraction of positions whose argmax token is unchanged


@dataclass
class ConversionResult:
    model: nn.Module
    config: ConversionConfig
    report: RewriteReport
    drift: Drift | None
    drift_note: str = ""


def _logits(model, ids):
    out = model(ids, use_cache=False) if _is_hf(model) else model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


def _is_hf(model) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


@torch.no_grad()
def convert_model(model: nn.Module, config: ConversionConfig, progress=None, drift_tokens: int = 32) -> ConversionResult:
    """Convert ``model`` in place (its attention modules are swapped) and return it with a report.

    A transformers model becomes an ``RLA<Base>`` instance with an RLAConfig (so save_pretrained writes
    a loadable RLA checkpoint); any other nn.Module keeps its class.
    """
    from .compat import patch_device_bound_kernels

    patch_device_bound_kernels()
    torch.manual_seed(config.seed)
    ids = example_input_ids(model, drift_tokens)
    was_training = model.training
    model.eval()
    try:
        before, note, failed = _logits(model, ids), "", None
    except Exception as err:  # e.g. an fla model whose Triton kernels need a GPU: convert anyway
        before, note = None, f"original model could not run here ({type(err).__name__}); drift not measured"
        failed = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
    config.source = {"class": type(model).__name__, "model_type": getattr(getattr(model, "config", None), "model_type", None),
                     "name": getattr(getattr(model, "config", None), "_name_or_path", "") or config.source.get("name", "")}
    undo = _Undo(model, config)
    try:
        report = rewrite_model(model, config, progress=progress)
        if _is_hf(model):
            _promote(model, config)
        drift = None
        if before is not None:
            try:
                after = _logits(model, ids)
            except BackendUnavailableError:  # e.g. --backend triton recorded for a GPU, converted on a CPU machine
                with _automatic_backend(model):
                    after = _logits(model, ids)
                note = (f"drift measured with this machine's kernel backend; the layers keep backend="
                        f"{config.backend!r} for where it runs")
            drift = Drift(float((after - before).norm() / before.norm()),
                          float((after.argmax(-1) == before.argmax(-1)).float().mean()))
    except BaseException as err:
        undo()  # nothing half-converted is left looking converted
        model.train(was_training)
        if isinstance(err, UserError) and failed and str(err).startswith("could not capture"):
            # the trace runs that same forward: name the cause
            raise UserError(f"the original model's own forward fails here ({failed}), and the conversion traces it; "
                            "run the model once as it is to see why") from None
        raise
    model.train(was_training)
    return ConversionResult(model, config, report, drift, note)


class _Undo:
    """What conversion changes on a model (its modules, its class, its modules' configs, attributes the converted
    class caches on it) and on the ConversionConfig (its layers), noted before, to put back if the conversion fails
    after the first swap (a converted forward that raises, say). Not undone: a GGUF model's dropped quantizer
    (its weights were dequantised on load; nothing reads it after)."""

    def __init__(self, model: nn.Module, config: ConversionConfig):
        self.model, self.cls, self.config, self.layers = model, type(model), config, list(config.layers)
        self.modules = dict(model.named_modules())
        self.configs = [(m, m.config) for m in self.modules.values() if hasattr(m, "config")]
        self.attributes = set(vars(model))

    def __call__(self) -> None:
        now = dict(self.model.named_modules())
        for path, module in self.modules.items():
            if path and now.get(path) is not module:
                parent, _, child = path.rpartition(".")
                setattr(self.modules[parent] if parent else self.model, child, module)
        self.model.__class__ = self.cls
        for module, config in self.configs:
            module.config = config
        for name in set(vars(self.model)) - self.attributes:  # e.g. the converted class's cached RoPE flag
            delattr(self.model, name)
        self.config.layers = self.layers


@contextlib.contextmanager
def _automatic_backend(model):
    """The converted layers call the backend rla_kernels picks here, for the duration (the same math)."""
    from .layers import ResidualAttention
    from .layers.ops import kernel_op

    layers = [m for m in model.modules() if isinstance(m, ResidualAttention)]
    bound = [m._op for m in layers]
    for m in layers:
        m._op = kernel_op(m.variant, None)
    try:
        yield
    finally:
        for m, op in zip(layers, bound):
            m._op = op


def _promote(model, config: ConversionConfig) -> None:
    """Make the live model an RLA<Base> with an RLAConfig, exactly what loading the export builds."""
    from .models.configuration_rla import RLAConfig
    from .models.modeling_rla import converted_class

    base_config, base_class = model.config, type(model)
    _drop_gguf_quantizer(model, base_config)
    # the training-only fields (recompute_states) stay on the live layers and out of the saved config
    rla_config = RLAConfig.from_base(base_config, config.model_dict(), base_class)
    for module in model.modules():
        if getattr(module, "config", None) is base_config:
            module.config = rla_config
    model.__class__ = converted_class(base_class)


def _drop_gguf_quantizer(model, base_config) -> None:
    """A GGUF checkpoint is dequantised on load; its quantizer only blocks save_pretrained afterwards."""
    quantizer = getattr(model, "hf_quantizer", None)
    dequantised = all(type(p) in (torch.Tensor, nn.Parameter) and p.dtype.is_floating_point for p in model.parameters())
    if quantizer is not None and "gguf" in type(quantizer).__name__.lower() and dequantised:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(base_config, "quantization_config"):
            del base_config.quantization_config

"""Graph capture: find the attention sites of a model from its ``torch.export`` graph.

``torch.export.export(model, ..., strict=False)`` traces transformers 5 models (where
``transformers.utils.fx`` is gone and ``torch.fx.symbolic_trace`` fails) and keeps one
``aten.scaled_dot_product_attention`` node per softmax attention call; every node's
``meta['nn_module_stack']`` names the modules it ran inside, innermost last, so the innermost one is
the attention module to swap. Linear-attention mixers (Gated DeltaNet) run kernels that cannot be
traced on every device, so during capture the registry's known mixer classes run a marker op instead
of their body: the marker shows up in the graph at the mixer's place, with the mixer's module stack.

Some models launch raw Triton kernels outside their mixers too (fla's models: fused RMSNorm, SwiGLU);
``torch.export`` hands those launches fake tensors and fails. Capture then falls back to a real-tensor
trace: ``make_fx`` records the aten graph of one eager run (a launch sees real tensors, and its kernel
does not appear in the graph, which is all site finding needs), and forward hooks stamp each node
with the module stack it ran under, as export does. (Dynamo is no substitute here: a graph break
inside a nested module restarts tracing in that module's own frame, and the path from the model's
root is lost.)

A model run with eager attention (Gemma2, which has no SDPA path; any model loaded with
``attn_implementation="eager"``) computes softmax(q k^T) k by hand: there the site is a softmax node whose
innermost module's class is named like an attention class (``*Attention*``), recorded as op ``"softmax"``
without shapes (only the registry's class-named adapters take such a site).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import describe

ATTENTION_TARGETS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                     "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
SOFTMAX_TARGETS = ("aten.softmax.", "aten._softmax.", "aten._safe_softmax.")


@torch.library.custom_op("rla_convert::mixer_site", mutates_args=())
def mixer_site(hidden_states: torch.Tensor) -> torch.Tensor:
    """Stands in for a recurrent mixer's body during capture: same shape out as in."""
    return hidden_states.clone()


@mixer_site.register_fake
def _(hidden_states):
    return torch.empty_like(hidden_states)


@dataclass
class Site:
    path: str  # module path in the model, e.g. model.layers.0.self_attn
    class_name: str  # the module's class, e.g. LlamaAttention
    op: str  # "sdpa", "softmax" (eager attention: no shapes) or "mixer"
    q_shape: tuple | None = None  # SDPA query [B, H, T, D] as traced
    k_shape: tuple | None = None
    is_causal: bool | None = None


def _owner(node) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return path, cls_name.rsplit(".", 1)[-1]


@contextmanager
def _mixers_as_markers(model, mixer_classes: set[str], call_styles: dict[str, str]):
    patched = []
    for module in model.modules():
        name = type(module).__name__
        if name in mixer_classes:
            style = call_styles[name]

            def marker(hidden_states=None, *args, _style=style, **kwargs):
                out = mixer_site(hidden_states)
                return out if _style == "tensor" else (out, None) if _style == "pair" else (out, None, kwargs.get("past_key_values"))

            module.forward = marker
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def capture_sites(model: torch.nn.Module, example_input_ids: torch.Tensor, mixer_classes: dict[str, str]) -> list[Site]:
    """Trace ``model`` on ``example_input_ids`` and return its attention sites in graph order.

    ``mixer_classes`` maps recurrent-mixer class names to their call style (see ResidualAttention).
    Tries ``torch.export`` (non-strict) first, a real-tensor trace when export cannot trace the model;
    raises CaptureError naming both failures when neither can.
    """
    kwargs = {"use_cache": False} if _accepts(model, "use_cache") else {}
    with _mixers_as_markers(model, set(mixer_classes), mixer_classes), torch.no_grad():
        try:
            graph = torch.export.export(model, (example_input_ids,), kwargs=kwargs, strict=False).graph
        except Exception as export_err:
            try:
                graph = _real_trace(model, example_input_ids, kwargs)
            except Exception as trace_err:
                raise CaptureError(f"torch.export: {describe(export_err)}; real-tensor trace: "
                                   f"{describe(trace_err)}") from None
    return _sites_in(graph)


def _tensors_of(output):
    """What a trace can return: the logits of a transformers output (some models return a cache even with
    use_cache=False, GraniteMoe's, which no tracer takes as an output), else the output as it is."""
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else output


class CaptureError(RuntimeError):
    """Neither torch.export nor the real-tensor trace could capture the model's graph."""


def _real_trace(model, example_input_ids, kwargs):
    """The aten graph of one eager run of ``model``, each node carrying ``nn_module_stack``."""
    from torch.fx import traceback as fx_traceback
    from torch.fx.experimental.proxy_tensor import make_fx

    paths = {module: path for path, module in model.named_modules()}
    stack: list[torch.nn.Module] = []

    def stamp():
        fx_traceback.current_meta["nn_module_stack"] = {
            paths[m] or "root": (paths[m], type(m)) for m in stack}

    def enter(module, args):
        stack.append(module)
        stamp()

    def leave(module, args, output):
        stack.pop()
        stamp()

    handles = [h for module in paths for h in (module.register_forward_pre_hook(enter),
                                                module.register_forward_hook(leave))]
    try:
        with fx_traceback.preserve_node_meta():
            return make_fx(lambda ids: _tensors_of(model(ids, **kwargs)), tracing_mode="real",
                           pre_dispatch=True)(example_input_ids).graph
    finally:
        for handle in handles:  # (preserve_node_meta has already restored current_meta as it found it)
            handle.remove()


def _sites_in(graph) -> list[Site]:
    sites: dict[str, Site] = {}
    softmax: dict[str, Site] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        owner = _owner(node)
        if owner is None:
            continue
        path, cls_name = owner
        path = _normalise(path)
        if "mixer_site" in target:
            sites.setdefault(path, Site(path, cls_name, "mixer"))
        elif any(t in target for t in ATTENTION_TARGETS):
            q, k = (tuple(node.args[i].meta["val"].shape) for i in (0, 1))
            causal = bool(node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False))
            sites.setdefault(path, Site(path, cls_name, "sdpa", q, k, causal))
        elif target.startswith(SOFTMAX_TARGETS) and "attention" in cls_name.lower():
            softmax.setdefault(path, Site(path, cls_name, "softmax"))
    if sites:  # a model whose attention calls SDPA: a softmax elsewhere (a pooling head, a vision tower) is not one
        return list(sites.values())
    return list(softmax.values())  # eager attention: softmax(q k^T) v by hand in every attention module


def _accepts(model, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _normalise(path: str) -> str:
    """``L['self'].model.layers[0].self_attn`` (Dynamo spelling) -> ``model.layers.0.self_attn``."""
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").replace("'", "").strip(".")

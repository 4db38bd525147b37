"""Graph capture: find the attention sites of a model from its ``torch.export`` graph.

``torch.export.export(model, ..., strict=False)`` traces transformers 5 models (where
``transformers.utils.fx`` is gone and ``torch.fx.symbolic_trace`` fails) and keeps one
``aten.scaled_dot_product_attention`` node per softmax attention call; every node's
``meta['nn_module_stack']`` names the modules it ran inside, innermost last, so the innermost one is
the attention module to swap. Linear-attention mixers (Gated DeltaNet) run kernels that cannot be
traced on every device, so during capture the registry's known mixer classes run a marker op instead
of their body: the marker shows up in the graph at the mixer's place, with the mixer's module stack.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

ATTENTION_TARGETS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                     "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")


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
    op: str  # "sdpa" or "mixer"
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
    """
    kwargs = {"use_cache": False} if _accepts(model, "use_cache") else {}
    with _mixers_as_markers(model, set(mixer_classes), mixer_classes), torch.no_grad():
        program = torch.export.export(model, (example_input_ids,), kwargs=kwargs, strict=False)
    sites: dict[str, Site] = {}
    for node in program.graph.nodes:
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
            q, k = (node.args[i].meta["val"].shape for i in (0, 1))
            causal = bool(node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False))
            sites.setdefault(path, Site(path, cls_name, "sdpa", tuple(q), tuple(k), causal))
    return list(sites.values())


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

"""The one place that knows each supported architecture: how to recognise its attention module and
how to read that module's weights into a ResidualAttention layer.

An adapter gives (1) the constructor arguments of the new layer (sizes, heads, biases, norms, how the
host block calls it) and (2) the new layer's state-dict entries taken from the old module. Whatever an
adapter does not provide (the new gates) is set by rla_convert.init; the names it does provide are the
"reused" weights and are never re-initialised.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import UserError
from .capture import Site


@dataclass(frozen=True)
class Adapter:
    name: str
    description: str
    source_kind: str  # "softmax" or "gated-deltanet"
    call_style: str  # how the host block unpacks the mixer's output (see ResidualAttention)
    matches: Callable[[nn.Module, Site], bool]
    layer_kwargs: Callable[[nn.Module, Site, object], dict]  # (module, site, model config) -> kwargs
    weights: Callable[[nn.Module], dict[str, torch.Tensor]]


def _classes(*names):
    return lambda module, site: type(module).__name__ in names


def _copy(pairs):
    return {new: tensor.detach().clone() for new, tensor in pairs if tensor is not None}


# -- Llama family: Llama, Mistral, Qwen2, Qwen3 (q_norm/k_norm), SmolLM2 (= Llama) ------------------

LLAMA_FAMILY = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")


def _llama_kwargs(m, site, config):
    kwargs = dict(hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
                  num_k_heads=config.num_key_value_heads, head_dim=m.head_dim,
                  qkv_bias=m.q_proj.bias is not None, o_bias=m.o_proj.bias is not None, rope=True)
    if hasattr(m, "q_norm"):
        kwargs.update(qk_norm=True, norm_eps=getattr(m.q_norm, "variance_epsilon", 1e-6))
    return kwargs


def _llama_weights(m):
    pairs = [(f"{p}.{w}", getattr(getattr(m, p), w)) for p in ("q_proj", "k_proj", "v_proj", "o_proj") for w in ("weight", "bias")]
    if hasattr(m, "q_norm"):
        pairs += [("q_norm.weight", m.q_norm.weight), ("k_norm.weight", m.k_norm.weight)]
    return _copy(pairs)


# -- GPT-2: fused c_attn Conv1D (weight [in, out], y = x W + b) --------------------------------------

def _gpt2_kwargs(m, site, config):
    return dict(hidden_size=m.embed_dim, num_heads=m.num_heads, head_dim=m.head_dim, qkv_bias=True, o_bias=True, rope=False)


def _gpt2_weights(m):
    d = m.embed_dim
    w, b = m.c_attn.weight, m.c_attn.bias
    out = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{name}.weight"] = w[:, i * d:(i + 1) * d].t().contiguous()
        out[f"{name}.bias"] = b[i * d:(i + 1) * d]
    out["o_proj.weight"] = m.c_proj.weight.t().contiguous()
    out["o_proj.bias"] = m.c_proj.bias
    return _copy(out.items())


# -- A plain PyTorch module: SDPA on q/k/v projections (sizes read from the traced graph) ------------

PLAIN_EXCLUDED_ARGS = ("position_embeddings", "position_ids", "freqs_cis", "rotary_pos_emb", "rotary_emb")


def _plain_matches(m, site):
    """SDPA straight on the projections: the module holds the four Linears and nothing else (no norm, no RoPE
    buffer), takes no positions, and is not transformers' own (those apply RoPE and norms the traced shapes do not
    show: each is known by class above, or refused by name)."""
    out = getattr(m, "o_proj", None) or getattr(m, "out_proj", None)
    linears = [getattr(m, n, None) for n in ("q_proj", "k_proj", "v_proj")] + [out]
    if site.op != "sdpa" or not all(isinstance(lin, nn.Linear) for lin in linears):
        return False
    if type(m).__module__.split(".")[0] in ("transformers", "transformers_modules"):
        return False
    own = {id(p) for lin in linears for p in lin.parameters()}
    if any(id(p) not in own for p in m.parameters()) or any(b.is_floating_point() for b in m.buffers()):
        return False
    try:
        args = inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        return False
    return not any(name in args for name in PLAIN_EXCLUDED_ARGS)


def _plain_kwargs(m, site, config):
    heads, head_dim = site.q_shape[1], site.q_shape[-1]
    out = getattr(m, "o_proj", None) or getattr(m, "out_proj")
    return dict(hidden_size=m.q_proj.in_features, num_heads=heads, num_k_heads=m.k_proj.out_features // head_dim,
                head_dim=head_dim, head_v_dim=m.v_proj.out_features // (m.k_proj.out_features // head_dim),
                qkv_bias=m.q_proj.bias is not None, o_bias=out.bias is not None, rope=False)


def _plain_weights(m):
    out = getattr(m, "o_proj", None) or getattr(m, "out_proj")
    pairs = [(f"{p}.{w}", getattr(getattr(m, p), w)) for p in ("q_proj", "k_proj", "v_proj") for w in ("weight", "bias")]
    return _copy(pairs + [("o_proj.weight", out.weight), ("o_proj.bias", out.bias)])


# -- flash-linear-attention's GatedDeltaNet layer -----------------------------------------------------

def _fla_gdn_kwargs(m, site, config):
    if m.allow_neg_eigval:
        raise UserError(f"{site.path}: GatedDeltaNet with allow_neg_eigval=True (beta in (0, 2)) has no RDN equivalent yet")
    if not m.use_gate or not m.use_short_conv or getattr(m, "conv_bias", False):
        raise UserError(f"{site.path}: only GatedDeltaNet with use_gate=True, use_short_conv=True and no conv bias is supported")
    return dict(hidden_size=m.hidden_size, num_heads=m.num_heads, num_k_heads=m.num_heads, num_v_heads=m.num_v_heads,
                head_dim=m.head_k_dim, head_v_dim=m.head_v_dim, conv_size=m.conv_size, output_gate=True,
                norm_eps=m.o_norm.eps, b_bias=False, rope=False)


def _fla_gdn_weights(m):
    names = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "a_proj.weight", "b_proj.weight",
             "A_log", "dt_bias", "g_proj.weight", "o_norm.weight", "q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"]
    state = m.state_dict()
    return _copy((n, state[n]) for n in names)


# -- transformers' Qwen3-Next Gated DeltaNet: fused in_proj_qkvz / in_proj_ba, one conv over q|k|v ----

def _qwen3next_kwargs(m, site, config):
    return dict(hidden_size=m.hidden_size, num_heads=m.num_k_heads, num_k_heads=m.num_k_heads, num_v_heads=m.num_v_heads,
                head_dim=m.head_k_dim, head_v_dim=m.head_v_dim, conv_size=m.conv_kernel_size, output_gate=True,
                norm_eps=m.norm.variance_epsilon, b_bias=False, rope=False)


def _qwen3next_weights(m):
    """Undo the per-key-head-group interleaving of the fused projections (fix_query_key_value_ordering)."""
    hk, hv, dk, dv = m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim
    per = hv // hk
    w = m.in_proj_qkvz.weight.view(hk, 2 * dk + 2 * per * dv, -1)
    q, k, v, z = torch.split(w, [dk, dk, per * dv, per * dv], dim=1)
    ba = m.in_proj_ba.weight.view(hk, 2 * per, -1)
    b, a = torch.split(ba, [per, per], dim=1)
    conv = m.conv1d.weight
    cq, ck, cv = torch.split(conv, [m.key_dim, m.key_dim, m.value_dim], dim=0)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    return _copy([
        ("q_proj.weight", flat(q)), ("k_proj.weight", flat(k)), ("v_proj.weight", flat(v)), ("g_proj.weight", flat(z)),
        ("b_proj.weight", flat(b)), ("a_proj.weight", flat(a)), ("A_log", m.A_log), ("dt_bias", m.dt_bias),
        ("o_norm.weight", m.norm.weight), ("o_proj.weight", m.out_proj.weight),
        ("q_conv1d.weight", cq), ("k_conv1d.weight", ck), ("v_conv1d.weight", cv),
    ])


ADAPTERS = (
    Adapter("llama-family", "Llama, Mistral, Qwen2, Qwen3, SmolLM2 attention (" + ", ".join(LLAMA_FAMILY) + ")",
            "softmax", "pair", _classes(*LLAMA_FAMILY), _llama_kwargs, _llama_weights),
    Adapter("gpt2", "GPT-2 attention (GPT2Attention, fused c_attn)", "softmax", "pair",
            _classes("GPT2Attention"), _gpt2_kwargs, _gpt2_weights),
    Adapter("fla-gated-deltanet", "flash-linear-attention GatedDeltaNet layer", "gated-deltanet", "triple",
            _classes("GatedDeltaNet"), _fla_gdn_kwargs, _fla_gdn_weights),
    Adapter("qwen3-next-gdn", "transformers Qwen3-Next Gated DeltaNet (Qwen3NextGatedDeltaNet)", "gated-deltanet", "tensor",
            _classes("Qwen3NextGatedDeltaNet"), _qwen3next_kwargs, _qwen3next_weights),
    Adapter("plain-sdpa", "any module (not transformers') that is only q_proj/k_proj/v_proj and o_proj (or out_proj) "
            "Linears around F.scaled_dot_product_attention", "softmax", "pair", _plain_matches, _plain_kwargs,
            _plain_weights),
)

MIXER_CLASSES = {"GatedDeltaNet": "triple", "Qwen3NextGatedDeltaNet": "tensor"}


def adapter_for(module: nn.Module, site: Site) -> Adapter | None:
    return next((a for a in ADAPTERS if a.matches(module, site)), None)


def supported_summary() -> str:
    return "; ".join(a.description for a in ADAPTERS)

"""The one place that knows each supported architecture: how to recognise its attention module and
how to read that module's weights into a ResidualAttention layer.

An adapter gives (1) the constructor arguments of the new layer (sizes, heads, biases, norms, how the
host block calls it) and (2) the new layer's state-dict entries taken from the old module. Whatever an
adapter does not provide (the new gates) is set by rla_convert.init; the names it does provide are the
"reused" weights and are never re-initialised.

An architecture is added here only where the mapping is exact: the converted layer's q and k, after its norms and
RoPE, are the original module's on the same input (tests/test_architectures.py checks each). A class known but not
mappable (REFUSED), or a configuration an adapter cannot reproduce (a q/k/v clamp, LayerNorm on q/k, bidirectional
attention), is refused before any module is swapped: one UserError line naming the layer, its class and the reason.
Any other class is refused by name.
"""
from __future__ import annotations

import inspect
import re
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


def _linears(m, names=("q_proj", "k_proj", "v_proj")):
    """(name.weight, tensor), (name.bias, tensor or None) for each named Linear of ``m``, under the same names."""
    return [(f"{p}.{w}", getattr(getattr(m, p), w)) for p in names for w in ("weight", "bias")]


# -- transformers' q_proj/k_proj/v_proj/o_proj attention (Llama's layout) ----------------------------------
#
# Each class here was read against its transformers source: separate q/k/v/o Linears (biases as they are), RoPE
# from the host's (cos, sin) rotating halves of each head (Llama's rotate_half), optional per-head RMSNorm on q/k.
# What only softmax means (the logit scale, Gemma2's soft-capping, sliding windows, attention dropout) is dropped:
# the converted layer reads every earlier token through its recurrent state.

LLAMA_FAMILY = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention", "MixtralAttention",
                "MinistralAttention", "Qwen2MoeAttention", "Qwen3MoeAttention", "GraniteAttention",
                "Starcoder2Attention", "SeedOssAttention", "OlmoAttention", "Exaone4Attention", "SmolLM3Attention",
                "ArceeAttention", "CwmAttention", "ApertusAttention", "Dots1Attention", "GraniteMoeAttention",
                "GraniteMoeSharedAttention", "PhimoeAttention", "MiniMaxAttention", "Jais2Attention",
                "SolarOpenAttention", "HyperCLOVAXAttention", "Emu3Attention", "MellumAttention", "HYV3Attention",
                "ExaoneMoeAttention", "Ministral3Attention", "GraniteMoeHybridAttention")
GEMMA_FAMILY = ("GemmaAttention", "Gemma2Attention", "Gemma3Attention", "VaultGemmaAttention")
GLM_FAMILY = ("GlmAttention", "Glm4Attention", "HeliumAttention", "Ernie4_5Attention", "Ernie4_5_MoeAttention")
PARTIAL_ROPE_FAMILY = ("PhiAttention", "StableLmAttention")

# q_norm/k_norm (and MLA's latent norm) classes whose formula the layer's HeadRMSNorm reproduces (x * rsqrt(mean(x^2)
# + eps), then the weight), read against transformers' source: (offset added to the weight, whether the weight scales
# in fp32 before the cast back). Llama's order casts first; OLMo2/3 scale in fp32; Gemma3 scales in fp32 by 1 + weight.
RMS_NORMS = {"Qwen3RMSNorm": (0.0, False), "Qwen3MoeRMSNorm": (0.0, False), "Exaone4RMSNorm": (0.0, False),
             "OlmoeRMSNorm": (0.0, False), "ApertusRMSNorm": (0.0, False), "Dots1RMSNorm": (0.0, False),
             "MellumRMSNorm": (0.0, False), "HYV3RMSNorm": (0.0, False), "ExaoneMoeRMSNorm": (0.0, False),
             "Glm4MoeRMSNorm": (0.0, False), "Lfm2RMSNorm": (0.0, False), "Lfm2MoeRMSNorm": (0.0, False),
             "DeepseekV3RMSNorm": (0.0, False), "YoutuRMSNorm": (0.0, False), "Glm4MoeLiteRMSNorm": (0.0, False),
             "MiniCPM3RMSNorm": (0.0, False),
             "Olmo2RMSNorm": (0.0, True), "Olmo3RMSNorm": (0.0, True), "FlexOlmoRMSNorm": (0.0, True),
             "Gemma3RMSNorm": (1.0, True)}
OLMO2_FAMILY = ("Olmo2Attention", "Olmo3Attention", "OlmoeAttention", "FlexOlmoAttention")


def _with_rope_dim(kwargs, rope_dim, site):
    """Partial RoPE: the layer rotates the first ``rope_dim`` features of each head (left out for a whole head)."""
    if not (0 < rope_dim <= kwargs["head_dim"] and rope_dim % 2 == 0):
        _refuse(site, f"its RoPE covers {rope_dim} of {kwargs['head_dim']} head features; the converted layer "
                      "rotates an even number of them, at least 2")
    return {**kwargs, "rope_dim": rope_dim} if rope_dim != kwargs["head_dim"] else kwargs


def _rope_parameters(m) -> dict:
    """The module's config's RoPE parameters: its layer type's where they are per layer type (Gemma3's)."""
    params = getattr(getattr(m, "config", None), "rope_parameters", None) or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        kind = getattr(m, "layer_type", None) or getattr(m, "attention_type", None)
        params = params.get(kind) or next(iter(params.values()))
    return params


def _config_rope_dim(m):
    """The features transformers' rotary embedding covers: int(head_dim * partial_rotary_factor)."""
    return int(m.head_dim * _rope_parameters(m).get("partial_rotary_factor", 1.0))


def _refuse(site, reason):
    raise UserError(f"cannot convert {site.path} ({site.class_name}): {reason}")


def _causal(m, site):
    if getattr(m, "is_causal", True) is False:
        _refuse(site, "it attends bidirectionally (is_causal=False); the converted layer is causal")


def _norm_eps(norm):
    return next(getattr(norm, a) for a in ("variance_epsilon", "eps") if hasattr(norm, a))


def _qk_norm_kwargs(m, site, q_width, k_width, head_dim, names=("q_norm", "k_norm")):
    """The layer's qk_norm arguments for the module's q/k norms (``names``): per head, or over the whole projection."""
    q_norm, k_norm = (getattr(m, name, None) for name in names)
    if q_norm is None:
        return {}
    cls = type(q_norm).__name__
    if cls not in RMS_NORMS or type(k_norm).__name__ != cls:
        _refuse(site, f"its {names[0]} is a {cls}, not an RMSNorm whose formula the converted layer reproduces")
    shapes = (q_norm.weight.shape[0], k_norm.weight.shape[0])
    if shapes == (head_dim, head_dim):
        over = "head"
    elif shapes == (q_width, k_width):
        over = "all"  # OLMo2: one RMSNorm over all heads of the projection
    else:
        _refuse(site, f"its q_norm/k_norm widths {shapes} are neither the head ({head_dim}) nor the projections")
    offset, in_fp32 = RMS_NORMS[cls]
    order = {k: v for k, v in (("qk_norm_offset", offset), ("qk_norm_fp32", in_fp32)) if v}  # defaults left out
    return dict(qk_norm=True, norm_eps=_norm_eps(q_norm), **({"qk_norm_over": over} if over == "all" else {}),
                **order)


def _projection_kwargs(m, o_proj):
    """Sizes and biases of separate q/k/v Linears around an output Linear ``o_proj``, with whole-head RoPE."""
    d = m.head_dim
    return dict(hidden_size=m.q_proj.in_features, num_heads=m.q_proj.out_features // d,
                num_k_heads=m.k_proj.out_features // d, head_dim=d, qkv_bias=m.q_proj.bias is not None,
                o_bias=o_proj.bias is not None, rope=True)


def _llama_kwargs(m, site, config, rope_dim_read=False):
    """``rope_dim_read``: the caller maps a partial RoPE itself; otherwise one is refused (these adapters rotate
    whole heads: a config's partial_rotary_factor under an unchanged forward means a model-level RoPE function
    that rotates part of each head)."""
    _causal(m, site)
    if getattr(getattr(m, "config", None), "clip_qkv", None) is not None:  # OLMo's clamp on q/k/v
        _refuse(site, "its config clamps q/k/v (clip_qkv), which the converted layer does not")
    d = m.head_dim
    kwargs = _projection_kwargs(m, m.o_proj)
    if type(m).__name__ in ("Exaone4Attention", "ExaoneMoeAttention"):  # with a sliding window, EXAONE 4's global
        # layers use no RoPE
        kwargs["rope"] = m.sliding_window is None or m.is_sliding
    if type(m).__name__ == "SmolLM3Attention":  # its config's no_rope_layers: every fourth layer by default
        kwargs["rope"] = bool(m.use_rope)
    if type(m).__name__ == "GraniteMoeHybridAttention":  # Granite 4: RoPE only where the config asks for it
        kwargs["rope"] = getattr(m.config, "position_embedding_type", None) == "rope"
    kwargs.update(_qk_norm_kwargs(m, site, m.q_proj.out_features, m.k_proj.out_features, d))
    if kwargs["rope"] and not rope_dim_read and getattr(m, "config", None) is not None and _config_rope_dim(m) != d:
        _refuse(site, f"its config rotates {_config_rope_dim(m)} of {d} head features (partial_rotary_factor); "
                      "this architecture's adapter maps whole-head RoPE only")
    return kwargs


def _llama_weights(m):
    pairs = _linears(m, ("q_proj", "k_proj", "v_proj", "o_proj"))
    if getattr(m, "q_norm", None) is not None:  # as they are: the layer's norm adds the offset (RMS_NORMS)
        pairs += [("q_norm.weight", m.q_norm.weight), ("k_norm.weight", m.k_norm.weight)]
    return _copy(pairs)


# -- GLM, GLM-4, Helium: Llama's layout with interleaved RoPE over the first rotary features ----------------
#
# Their RoPE rotates the pairs (2i, 2i+1) of a head by the host's i-th frequency; the layer rotates (i, i + r/2).
# Reordering each head's first r rows of q_proj/k_proj (even features first, then odd) makes the layer's rotation
# the same rotation of the same features: q.k, SiLU and the L2 norm do not see the order, so the converted layer
# computes what it would on the original order (q_proj/k_proj rows permuted; v_proj and o_proj as they are).

def _partial_llama_kwargs(m, site, config):
    """Llama's layout with RoPE on the first features of each head (Nemotron's partial_rotary_factor)."""
    return _with_rope_dim(_llama_kwargs(m, site, config, rope_dim_read=True), _config_rope_dim(m), site)


def _glm_kwargs(m, site, config):
    if getattr(m, "q_norm", None) is not None:  # _glm_weights reorders q/k rows, not a norm's weights
        _refuse(site, "q/k norms with interleaved RoPE are not mapped (their weights would need the same reordering)")
    return _partial_llama_kwargs(m, site, config)


QK_ROWS = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")


def _reorder_qk(weights, head_dim, order, names=QK_ROWS):
    """``weights``' q/k entries among ``names`` with each head's rows taken in ``order`` (in place; returned)."""
    for name in names:
        if name in weights:
            weights[name] = _reorder_heads(weights[name], head_dim, order)
    return weights


def _reorder_heads(t, head_dim, order):
    """Each head's rows (head_dim of them, in turn) taken in ``order``."""
    heads = t.shape[0] // head_dim
    return t.reshape(heads, head_dim, *t.shape[1:])[:, order.to(t.device)].reshape(t.shape)


def _deinterleaved(head_dim, rope_dim):
    """A head's rows reordered: the first rope_dim as evens then odds, the rest in place."""
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2), torch.arange(rope_dim, head_dim)])


def partial_rope_order(head_dim: int, rope_dim: int) -> torch.Tensor:
    """A head's features in the layer's order for a partial RoPE (ResidualAttention, rope_dim): the rotated first
    half, the passed first half, the rotated second half, the passed second half."""
    half, passed = rope_dim // 2, (head_dim - rope_dim) // 2
    return torch.cat([torch.arange(0, half), torch.arange(rope_dim, rope_dim + passed), torch.arange(half, rope_dim),
                      torch.arange(rope_dim + passed, head_dim)])


def layer_weights(adapter, module, kwargs) -> dict:
    """``adapter``'s weights for a layer built from ``kwargs``, in the layer's q/k feature order: with a partial
    RoPE each head's q/k rows (and q/k norm weights) as ``partial_rope_order`` lays them."""
    weights = adapter.weights(module)
    rope_dim, head_dim = kwargs.get("rope_dim"), kwargs.get("head_dim")
    if rope_dim is None or rope_dim == head_dim:
        return weights
    # MLA's q rows too (q_b_proj, or q_proj); its layer assembles each key head in this order (_latent_qkv)
    return _reorder_qk(weights, head_dim, partial_rope_order(head_dim, rope_dim),
                       QK_ROWS + ("q_norm.weight", "k_norm.weight", "q_b_proj.weight"))


def _glm_weights(m):
    return _reorder_qk(_llama_weights(m), m.head_dim, _deinterleaved(m.head_dim, _config_rope_dim(m)))


# -- Phi-3: one fused qkv_proj, [q | k | v] rows --------------------------------------------------------------

def _phi3_kwargs(m, site, config):
    _causal(m, site)
    d, hq, hk = m.head_dim, m.config.num_attention_heads, m.num_key_value_heads
    return _with_rope_dim(dict(hidden_size=m.qkv_proj.in_features, num_heads=hq, num_k_heads=hk, head_dim=d,
                               qkv_bias=m.qkv_proj.bias is not None, o_bias=m.o_proj.bias is not None, rope=True),
                          _config_rope_dim(m), site)


def _phi3_weights(m):
    d, hq, hk = m.head_dim, m.config.num_attention_heads, m.num_key_value_heads
    sizes = [hq * d, hk * d, hk * d]
    pairs = [(f"{p}.weight", t) for p, t in zip(("q_proj", "k_proj", "v_proj"), m.qkv_proj.weight.split(sizes))]
    if m.qkv_proj.bias is not None:
        pairs += [(f"{p}.bias", t) for p, t in zip(("q_proj", "k_proj", "v_proj"), m.qkv_proj.bias.split(sizes))]
    return _copy(pairs + [("o_proj.weight", m.o_proj.weight), ("o_proj.bias", m.o_proj.bias)])


# -- GPT-NeoX (Pythia): fused query_key_value, per head [q | k | v]; partial RoPE; dense out -----------------------

def _neox_kwargs(m, site, config):
    _causal(m, site)
    d = m.head_size
    heads = m.query_key_value.out_features // (3 * d)
    return _with_rope_dim(dict(hidden_size=m.query_key_value.in_features, num_heads=heads, head_dim=d,
                               qkv_bias=m.query_key_value.bias is not None, o_bias=m.dense.bias is not None, rope=True),
                          m.rotary_ndims, site)


def _neox_weights(m):
    d = m.head_size
    heads = m.query_key_value.out_features // (3 * d)
    pairs = []
    for w in ("weight", "bias"):
        fused = getattr(m.query_key_value, w)
        if fused is None:
            continue
        per_head = fused.reshape(heads, 3 * d, *fused.shape[1:])  # the forward's view(..., heads, 3 * head_size)
        for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
            pairs.append((f"{p}.{w}", per_head[:, i * d:(i + 1) * d].reshape(heads * d, *fused.shape[1:])))
    return _copy(pairs + [("o_proj.weight", m.dense.weight), ("o_proj.bias", m.dense.bias)])


# -- Phi (phi-1/1.5/2), StableLM: separate q/k/v, partial RoPE (rotary_ndims), out through dense / o_proj ---------

def _partial_kwargs(m, site, config):
    _causal(m, site)
    if getattr(m, "qk_layernorm", False):
        _refuse(site, "its q/k LayerNorms (qk_layernorm: mean-centred, with a bias) are no RMSNorm the converted "
                      "layer has")
    out = getattr(m, "dense", None) or m.o_proj
    return _with_rope_dim(_projection_kwargs(m, out), m.rotary_ndims, site)


def _partial_weights(m):
    out = getattr(m, "dense", None) or m.o_proj
    return _copy(_linears(m) + [("o_proj.weight", out.weight), ("o_proj.bias", out.bias)])


# -- NanoChat: Llama's layout, RoPE by -theta (its rotate_half flips the signs), then a weightless RMSNorm ----------
#
# A rotation by -theta of the pair (x_i, x_{i+d/2}) is the rotation by +theta of the pair swapped, swapped back: with
# each head's two halves of q/k rows exchanged, the layer's RoPE is theirs on a fixed permutation of the features,
# which q.k, SiLU and the L2 norm do not see. Their norm follows RoPE, has no weight and rotations keep a head's RMS:
# it is the layer's norm before RoPE with a weight of ones.

def _nanochat_kwargs(m, site, config):
    _causal(m, site)
    rope_type = _rope_parameters(m).get("rope_type", "default")
    if rope_type not in ("default", "linear", "dynamic"):  # YaRN, LongRoPE scale cos/sin (attention_scaling): their
        # norm after RoPE removes that scale, a norm before it would not
        _refuse(site, f"its {rope_type} RoPE scales cos/sin, which its norm after RoPE removes; the converted layer's "
                      "norm comes before RoPE")
    return {**_projection_kwargs(m, m.o_proj), "qk_norm": True, "norm_eps": m.q_norm.variance_epsilon}


def _nanochat_weights(m):
    d = m.head_dim
    weights = _copy(_linears(m, ("q_proj", "k_proj", "v_proj", "o_proj")))
    weights["q_norm.weight"] = weights["k_norm.weight"] = torch.ones(d, dtype=m.q_proj.weight.dtype)
    halves_swapped = torch.cat([torch.arange(d // 2, d), torch.arange(0, d // 2)])
    return _reorder_qk(weights, d, halves_swapped)


# -- LFM2: Qwen3's attention with its projections and norms named apart (out_proj, q_layernorm, k_layernorm) ---------

LFM2_FAMILY = ("Lfm2Attention", "Lfm2MoeAttention")


def _lfm2_kwargs(m, site, config):
    _causal(m, site)
    return {**_projection_kwargs(m, m.out_proj), **_qk_norm_kwargs(
        m, site, m.q_proj.out_features, m.k_proj.out_features, m.head_dim, names=("q_layernorm", "k_layernorm"))}


def _lfm2_weights(m):
    return _copy(_linears(m, ("q_proj", "k_proj", "v_proj"))
                 + [("o_proj.weight", m.out_proj.weight), ("o_proj.bias", m.out_proj.bias),
                    ("q_norm.weight", m.q_layernorm.weight), ("k_norm.weight", m.k_layernorm.weight)])


# -- Nemotron-H: Llama's layout without RoPE (its Mamba-2 layers carry the positions) -------------------------------

def _nope_llama_kwargs(m, site, config):
    return {**_llama_kwargs(m, site, config, rope_dim_read=True), "rope": False}


# -- OPT: q/k/v/out_proj, no RoPE (learned positions are added to the embeddings) ---------------------------------

def _opt_kwargs(m, site, config):
    _causal(m, site)
    return dict(hidden_size=m.embed_dim, num_heads=m.num_heads, head_dim=m.head_dim, qkv_bias=m.q_proj.bias is not None,
                o_bias=m.out_proj.bias is not None, rope=False)


def _opt_weights(m):
    return _copy(_linears(m) + [("o_proj.weight", m.out_proj.weight), ("o_proj.bias", m.out_proj.bias)])


# -- Cohere, Cohere2: Llama's layout; RoPE on the pairs (2i, 2i + 1), cos/sin interleaved by the model ------------
#
# As GLM's, with the model's cos/sin themselves interleaved (c0 c0 c1 c1 ...): the q/k rows are reordered (evens,
# then odds) and the layer lays cos/sin out in halves (rope_cos_interleaved), which is the same rotation.

COHERE_FAMILY = ("CohereAttention", "Cohere2Attention", "Cohere2MoeAttention")


def _cohere_kwargs(m, site, config):
    if getattr(m, "use_qk_norm", False):
        _refuse(site, "its q/k LayerNorms (use_qk_norm: mean-centred) are no RMSNorm the converted layer has")
    kwargs = _llama_kwargs(m, site, config)
    if type(m).__name__ in ("Cohere2Attention", "Cohere2MoeAttention"):  # its global (not sliding) layers run
        # without RoPE, but for Cohere2-MoE's dense prefix layers (force_rope)
        kwargs["rope"] = m.sliding_window is not None or bool(getattr(m, "force_rope", False))
    return {**kwargs, "rope_cos_interleaved": True} if kwargs["rope"] else kwargs


def _cohere_weights(m):
    # rows reordered in every layer: the order changes nothing where no RoPE rotates them
    return _reorder_qk(_llama_weights(m), m.head_dim, _deinterleaved(m.head_dim, m.head_dim))


# -- Multi-head Latent Attention (DeepSeek-V3's MLA): q from q_a_proj -> RMSNorm -> q_b_proj (or q_proj), k and v
# from a latent: kv_a_proj_with_mqa(x) = [latent | k_rot], kv_b_proj(RMSNorm(latent)) = per head [k_nope | v], k_rot
# one RoPE'd head shared by all. The layer keeps these projections (ResidualAttention, kv_lora_rank). Each q head's
# rows are stored as [rope | nope], which layer_weights lays out in the partial-RoPE order the layer assembles k in;
# with rope_interleave (RoPE on the pairs (2i, 2i + 1)) q's and k_rot's rope rows are taken evens then odds, as GLM's: the
# layer's rotation of (i, i + r/2) is then theirs, whose output is in that very order. Read against transformers'
# source: Youtu's, GLM-4-MoE-Lite's and MiniCPM3's forwards are DeepSeek-V3's (MiniCPM3's never
# interleaved).

MLA_FAMILY = ("DeepseekV3Attention", "YoutuAttention", "Glm4MoeLiteAttention", "MiniCPM3Attention")
MLA_NEVER_INTERLEAVED = ("MiniCPM3Attention",)


def _mla_interleaved(m) -> bool:
    return type(m).__name__ not in MLA_NEVER_INTERLEAVED and bool(m.config.rope_interleave)


def _mla_kwargs(m, site, config):
    _causal(m, site)
    norms = [n for n in (m.q_a_layernorm, m.kv_a_layernorm) if n is not None]
    for norm in norms:
        if RMS_NORMS.get(type(norm).__name__) != (0.0, False):
            _refuse(site, f"its latent norm is a {type(norm).__name__}, not an RMSNorm whose formula the converted "
                          "layer reproduces")
    if len({_norm_eps(n) for n in norms}) > 1:
        _refuse(site, "its q and kv latent norms have different eps; the converted layer has one")
    heads, nope, rope, v = m.num_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    if m.kv_b_proj.out_features != heads * (nope + v) or nope % 2:
        _refuse(site, f"its kv_b_proj gives {m.kv_b_proj.out_features} rows for {heads} heads of k_nope "
                      f"{nope} (even) and v {v}")
    biases = {p.bias is not None for p in (m.q_a_proj, m.kv_a_proj_with_mqa) if p is not None}
    if len(biases) > 1:
        _refuse(site, "q_a_proj and kv_a_proj_with_mqa differ in having a bias")
    return dict(hidden_size=m.hidden_size, num_heads=heads, head_dim=nope + rope, head_v_dim=v, rope=True,
                rope_dim=rope, q_lora_rank=m.q_lora_rank, kv_lora_rank=m.kv_lora_rank,
                latent_norm_eps=_norm_eps(m.kv_a_layernorm), qkv_bias=biases.pop(),
                o_bias=m.o_proj.bias is not None)


def _mla_weights(m):
    nope, r, rank = m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank
    rope_rows = _deinterleaved(r, r) if _mla_interleaved(m) else torch.arange(r)
    q_name = "q_proj" if m.q_lora_rank is None else "q_b_proj"
    names = ("q_a_proj", "q_a_layernorm", q_name, "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
    weights = _copy((f"{p}.{w}", getattr(getattr(m, p), w, None)) for p in names if getattr(m, p) is not None
                    for w in ("weight", "bias"))
    _reorder_qk(weights, nope + r, torch.cat([nope + rope_rows, torch.arange(nope)]), (f"{q_name}.weight",))
    kv_rows = torch.cat([torch.arange(rank), rank + rope_rows])  # the latent as it is, then k_rot's rows
    for name in ("kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.bias"):
        if name in weights:
            weights[name] = weights[name][kv_rows]
    return weights


# -- Known attention with no exact mapping: refused with the reason --------------------------------------------

REFUSED = {
    "GPTJAttention": "GPT-J computes its interleaved RoPE inside the module; the converted layer takes cos/sin from "
                     "the model",
    "GptOssAttention": "its attention sinks (learned per-head softmax logits) have no linear-attention counterpart",
    "DeepseekV2Attention": "its RoPE multiplies complex numbers by a complex freqs_cis table; the converted layer "
                           "takes (cos, sin) from the model",
    "Mistral4Attention": "it scales q by a factor growing with the position (llama_4_scaling_beta), which the "
                         "converted layer's SiLU would not pass through unchanged",
}


def _refused_kwargs(m, site, config):
    _refuse(site, REFUSED[type(m).__name__])


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


# -- GPT-BigCode (StarCoder, SantaCoder): one c_attn Linear, multi-query [q | k | v] or per head [q k v] ----------

def _bigcode_kwargs(m, site, config):
    if m.is_cross_attention:
        _refuse(site, "it is cross-attention (encoder states); the converted layer attends causally to its own tokens")
    return dict(hidden_size=m.embed_dim, num_heads=m.num_heads, num_k_heads=m.kv_heads, head_dim=m.head_dim,
                qkv_bias=m.c_attn.bias is not None, o_bias=m.c_proj.bias is not None, rope=False)


def _bigcode_weights(m):
    d, e, kv = m.head_dim, m.embed_dim, m.kv_dim
    if m.multi_query:
        starts = {"q_proj": (0, e), "k_proj": (e, e + kv), "v_proj": (e + kv, e + 2 * kv)}
        rows = {name: torch.arange(*span) for name, span in starts.items()}
    else:  # head h's rows: q at h * 3d, then k, then v
        heads = torch.arange(m.num_heads)[:, None] * 3 * d
        rows = {name: (heads + i * d + torch.arange(d)).reshape(-1)
                for i, name in enumerate(("q_proj", "k_proj", "v_proj"))}
    pairs = [(f"{name}.weight", m.c_attn.weight[r]) for name, r in rows.items()]
    if m.c_attn.bias is not None:
        pairs += [(f"{name}.bias", m.c_attn.bias[r]) for name, r in rows.items()]
    return _copy(pairs + [("o_proj.weight", m.c_proj.weight), ("o_proj.bias", m.c_proj.bias)])


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
    return _copy(_linears(m) + [("o_proj.weight", out.weight), ("o_proj.bias", out.bias)])


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
    """transformers' Gated DeltaNet layers (Qwen3-Next's, Qwen3.5's, OLMo Hybrid's): sizes, conv, gated output norm."""
    norm = m.norm if hasattr(m, "norm") else m.o_norm
    return dict(hidden_size=m.hidden_size, num_heads=m.num_k_heads, num_k_heads=m.num_k_heads,
                num_v_heads=m.num_v_heads, head_dim=m.head_k_dim, head_v_dim=m.head_v_dim, conv_size=m.conv_kernel_size,
                output_gate=True, norm_eps=norm.variance_epsilon, b_bias=False, rope=False)


def _conv_split(m):
    """Their one depthwise conv over q | k | v, as the layer's three."""
    cq, ck, cv = torch.split(m.conv1d.weight, [m.key_dim, m.key_dim, m.value_dim], dim=0)
    return [("q_conv1d.weight", cq), ("k_conv1d.weight", ck), ("v_conv1d.weight", cv)]


def _qwen3next_weights(m):
    """Undo the per-key-head-group interleaving of the fused projections (fix_query_key_value_ordering)."""
    hk, hv, dk, dv = m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim
    per = hv // hk
    w = m.in_proj_qkvz.weight.view(hk, 2 * dk + 2 * per * dv, -1)
    q, k, v, z = torch.split(w, [dk, dk, per * dv, per * dv], dim=1)
    ba = m.in_proj_ba.weight.view(hk, 2 * per, -1)
    b, a = torch.split(ba, [per, per], dim=1)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    return _copy([
        ("q_proj.weight", flat(q)), ("k_proj.weight", flat(k)), ("v_proj.weight", flat(v)), ("g_proj.weight", flat(z)),
        ("b_proj.weight", flat(b)), ("a_proj.weight", flat(a)), ("A_log", m.A_log), ("dt_bias", m.dt_bias),
        ("o_norm.weight", m.norm.weight), ("o_proj.weight", m.out_proj.weight), *_conv_split(m),
    ])


# -- transformers' Qwen3.5 Gated DeltaNet: Qwen3-Next's layer with plain projections (q|k|v, z, b, a apart) ----

QWEN3_5_GDN = ("Qwen3_5GatedDeltaNet", "Qwen3_5MoeGatedDeltaNet")


def _qwen3_5_weights(m):
    q, k, v = torch.split(m.in_proj_qkv.weight, [m.key_dim, m.key_dim, m.value_dim], dim=0)
    return _copy([
        ("q_proj.weight", q), ("k_proj.weight", k), ("v_proj.weight", v), ("g_proj.weight", m.in_proj_z.weight),
        ("b_proj.weight", m.in_proj_b.weight), ("a_proj.weight", m.in_proj_a.weight), ("A_log", m.A_log),
        ("dt_bias", m.dt_bias), ("o_norm.weight", m.norm.weight), ("o_proj.weight", m.out_proj.weight),
        *_conv_split(m),
    ])


# -- OLMo Hybrid's Gated DeltaNet: Qwen3.5's with every projection a Linear of its own (q, k, v, a, b, g) ------------

def _olmo_hybrid_kwargs(m, site, config):
    if m.allow_neg_eigval:
        _refuse(site, "its config's linear_allow_neg_eigval=True (beta in (0, 2)) has no RDN equivalent yet")
    return _qwen3next_kwargs(m, site, config)


def _olmo_hybrid_weights(m):
    return _copy([(f"{p}.weight", getattr(m, p).weight) for p in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj",
                                                                   "g_proj", "o_proj")]
                 + [("A_log", m.A_log), ("dt_bias", m.dt_bias), ("o_norm.weight", m.o_norm.weight), *_conv_split(m)])


DROPPED = "softmax-only logit scale (Ministral 3's long-context one too), soft-capping and sliding windows dropped"

ADAPTERS = (
    Adapter("llama-family", "Llama, Mistral, Mixtral, Ministral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE, Granite, "
            "Starcoder2, Seed-OSS, OLMo (no clip_qkv), EXAONE 4, EXAONE MoE, SmolLM2, SmolLM3, Arcee, CWM, Apertus, "
            "dots.llm1, GraniteMoe, Phi-3.5-MoE, MiniMax, Jais 2, Solar Open, HyperCLOVA X, Emu3, Mellum, HY-V3, "
            "Ministral 3, Granite 4 (GraniteMoeHybrid) attention ("
            + ", ".join(LLAMA_FAMILY) + f"; {DROPPED})",
            "softmax", "pair", _classes(*LLAMA_FAMILY), _llama_kwargs, _llama_weights),
    Adapter("olmo2", "OLMo2, OLMo3, OLMoE, FlexOlmo attention (" + ", ".join(OLMO2_FAMILY) + "; q/k RMSNorm over all heads; "
            f"no clip_qkv; {DROPPED})", "softmax", "pair", _classes(*OLMO2_FAMILY), _llama_kwargs, _llama_weights),
    Adapter("gemma", "Gemma, Gemma2, Gemma3, VaultGemma text attention (" + ", ".join(GEMMA_FAMILY) + "; Gemma3's q/k norms "
            f"scale by 1 + weight, in fp32; {DROPPED})", "softmax", "pair", _classes(*GEMMA_FAMILY), _llama_kwargs,
            _llama_weights),
    Adapter("glm", "GLM, GLM-4, Helium, Ernie 4.5 attention (" + ", ".join(GLM_FAMILY) + "; interleaved RoPE mapped by reordering "
            f"q/k rows; {DROPPED})", "softmax", "pair", _classes(*GLM_FAMILY), _glm_kwargs, _glm_weights),
    Adapter("cohere", "Cohere, Cohere2, Cohere2-MoE attention (" + ", ".join(COHERE_FAMILY) + "; interleaved RoPE "
            f"mapped by reordering q/k rows; no use_qk_norm; {DROPPED})", "softmax", "pair", _classes(*COHERE_FAMILY),
            _cohere_kwargs, _cohere_weights),
    Adapter("nemotron", f"Nemotron attention (NemotronAttention; partial RoPE kept; {DROPPED})", "softmax", "pair",
            _classes("NemotronAttention"), _partial_llama_kwargs, _llama_weights),
    Adapter("glm4-moe", "GLM-4.5 / GLM-4.6 attention (Glm4MoeAttention, also in Param2-MoE and Sarvam-MoE; optional "
            f"q/k RMSNorm; partial RoPE kept; {DROPPED})", "softmax", "pair", _classes("Glm4MoeAttention"),
            _partial_llama_kwargs, _llama_weights),
    Adapter("nanochat", "NanoChat attention (NanoChatAttention; its sign-flipped RoPE mapped by exchanging each "
            f"head's q/k row halves, its weightless q/k RMSNorm as ones; {DROPPED})", "softmax", "pair",
            _classes("NanoChatAttention"), _nanochat_kwargs, _nanochat_weights),
    Adapter("lfm2", "LFM2, LFM2-MoE attention (" + ", ".join(LFM2_FAMILY) + f"; its short-conv layers stay; {DROPPED})",
            "softmax", "pair", _classes(*LFM2_FAMILY), _lfm2_kwargs, _lfm2_weights),
    Adapter("nemotron-h", f"Nemotron-H attention (NemotronHAttention: no RoPE; its Mamba-2 layers stay; {DROPPED})",
            "softmax", "pair", _classes("NemotronHAttention"), _nope_llama_kwargs, _llama_weights),
    Adapter("phi3", f"Phi-3 attention (Phi3Attention, fused qkv_proj split; partial RoPE kept; {DROPPED})", "softmax",
            "pair", _classes("Phi3Attention"), _phi3_kwargs, _phi3_weights),
    Adapter("gpt-neox", "GPT-NeoX, Pythia attention (GPTNeoXAttention, per-head fused query_key_value split; partial "
            "RoPE kept)", "softmax", "pair", _classes("GPTNeoXAttention"), _neox_kwargs, _neox_weights),
    Adapter("phi-stablelm", "Phi, StableLM attention (" + ", ".join(PARTIAL_ROPE_FAMILY) + "; partial RoPE kept; "
            "no qk_layernorm)", "softmax", "pair", _classes(*PARTIAL_ROPE_FAMILY), _partial_kwargs, _partial_weights),
    Adapter("opt", "OPT, BioGPT attention (OPTAttention, BioGptAttention; no RoPE)", "softmax",
            "pair", _classes("OPTAttention", "BioGptAttention"), _opt_kwargs,
            _opt_weights),
    Adapter("gpt2", "GPT-2 attention (GPT2Attention, fused c_attn)", "softmax", "pair",
            _classes("GPT2Attention"), _gpt2_kwargs, _gpt2_weights),
    Adapter("gpt-bigcode", "GPT-BigCode, StarCoder, SantaCoder attention (GPTBigCodeAttention, fused c_attn split, "
            "multi-query or not)", "softmax", "pair", _classes("GPTBigCodeAttention"), _bigcode_kwargs,
            _bigcode_weights),
    Adapter("mla", "DeepSeek-V3, Youtu, GLM-4-MoE-Lite, MiniCPM3 Multi-head Latent Attention (" + ", ".join(MLA_FAMILY)
            + "; its latent projections and norms kept, interleaved RoPE mapped by reordering rows; softmax-only "
            "logit scale (YaRN's mscale) dropped)", "softmax", "pair", _classes(*MLA_FAMILY), _mla_kwargs,
            _mla_weights),
    Adapter("fla-gated-deltanet", "flash-linear-attention GatedDeltaNet layer", "gated-deltanet", "triple",
            _classes("GatedDeltaNet"), _fla_gdn_kwargs, _fla_gdn_weights),
    Adapter("qwen3-next-gdn", "transformers Qwen3-Next Gated DeltaNet (Qwen3NextGatedDeltaNet)", "gated-deltanet", "tensor",
            _classes("Qwen3NextGatedDeltaNet"), _qwen3next_kwargs, _qwen3next_weights),
    Adapter("qwen3.5-gdn", "transformers Qwen3.5 and Qwen3.5-MoE Gated DeltaNet (" + ", ".join(QWEN3_5_GDN) + ")",
            "gated-deltanet", "tensor", _classes(*QWEN3_5_GDN), _qwen3next_kwargs, _qwen3_5_weights),
    Adapter("olmo-hybrid-gdn", "transformers OLMo Hybrid Gated DeltaNet (OlmoHybridGatedDeltaNet; not with "
            "linear_allow_neg_eigval)", "gated-deltanet", "tensor", _classes("OlmoHybridGatedDeltaNet"),
            _olmo_hybrid_kwargs, _olmo_hybrid_weights),
    Adapter("plain-sdpa", "any module (not transformers') that is only q_proj/k_proj/v_proj and o_proj (or out_proj) "
            "Linears around F.scaled_dot_product_attention", "softmax", "pair", _plain_matches, _plain_kwargs,
            _plain_weights),
)
# known classes refused with a reason (never listed as supported)
REFUSALS = Adapter("refused", "", "softmax", "pair", _classes(*REFUSED), _refused_kwargs, lambda m: {})

MIXER_CLASSES = {"GatedDeltaNet": "triple", "Qwen3NextGatedDeltaNet": "tensor",
                 "OlmoHybridGatedDeltaNet": "tensor", **{name: "tensor" for name in QWEN3_5_GDN}}


def adapter_for(module: nn.Module, site: Site) -> Adapter | None:
    """The adapter for ``module``; a known but refused class gets one whose layer_kwargs raises the reason."""
    return next((a for a in (*ADAPTERS, REFUSALS) if a.matches(module, site)), None)


def verdict(module: nn.Module, path: str, model_config) -> str:
    """What converting would do with the mixer ``module``, read from its class and attributes without tracing
    (``rla-convert info``): ``converts (ADAPTER)``, ``refused: REASON`` or ``not known``. Modules outside
    transformers, which only the plain-SDPA adapter takes from the traced graph, are ``not known`` here."""
    site = Site(path, type(module).__name__, "mixer" if type(module).__name__ in MIXER_CLASSES else "sdpa")
    adapter = adapter_for(module, site)  # the rewriter's choice, REFUSALS included (its layer_kwargs refuses)
    if adapter is None or adapter.name == "plain-sdpa":
        return "not known"
    try:
        adapter.layer_kwargs(module, site, model_config)
    except UserError as err:
        return "refused: " + str(err).split("): ", 1)[-1]
    return f"converts ({adapter.name})"


def supported_summary() -> str:
    """The adapters' descriptions without their trailing class lists: one readable line (README has the table)."""
    return "; ".join(_without_last_parenthetical(a.description) for a in ADAPTERS) + " (README.md, Architectures)"


def _without_last_parenthetical(text: str) -> str:
    """``text`` less a final " (...)", nested parentheses included."""
    if not text.endswith(")"):
        return text
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[:i].rstrip()
    return text

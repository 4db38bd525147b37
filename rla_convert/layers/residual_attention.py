"""The RLA / RDN attention layer that replaces softmax attention or a Gated DeltaNet mixer.

Per token (paper, Section 3.4; the math itself lives in rla_kernels):
    q, k, v  = projections of x  (optional RMSNorm on q/k, per head or over all heads, RoPE on all or rope_dim
               features of each head, short causal conv)
    q, k     = L2norm(SiLU(q)), L2norm(SiLU(k))            (with a conv, SiLU follows the conv on q/k/v)
    g        = log a = -exp(A_log) * softplus(W_a x + dt_bias)   (Mamba-2 decay, in log space)
    beta     = sigmoid(W_b x),  gamma = sigmoid(W_gamma x)       (S and R write strengths)
    o        = rla|rdn(q, k, v, g, beta, gamma, clip)            then an optional per-head gain o_scale,
               (variant gdn, the baseline: the plain gated delta rule, no gamma and no residual branch)
               an optional RMSNorm(o) * SiLU(W_g x), and o_proj

MLA (DeepSeek-V2/V3's Multi-head Latent Attention, ``kv_lora_rank`` set): q = q_b_proj(RMSNorm(q_a_proj(x))) (or
q_proj(x) without ``q_lora_rank``); kv_a_proj_with_mqa(x) = [latent | k_rot], kv_b_proj(RMSNorm(latent)) = per head
[k_nope | v]; k_rot is one head shared by every key head. The RMSNorm between the two projections keeps them apart (no
one Linear is the pair), so the layer keeps MLA's projections and hands the same norm/RoPE/feature-map path q, k, v.

Heads: q, k and v may have different head counts (GQA in softmax models, more value heads than key
heads in Qwen3-Next); each is repeated to the largest count H, so every query in a group reads the same
shared key/value head, the same convention as ``repeat_kv`` / ``repeat_interleave`` upstream.

Padding (a 2D mask, or a 4D causal mask whose last query row says which keys are real): padded tokens
get a = 1, beta = gamma = 0 and zero inputs, so they leave the states untouched. Packed sequences pass
``cu_seqlens`` (or transformers' ``cu_seq_lens_q``) with batch size 1.

The constructor arguments are plain JSON values: the exported config stores them and the modeling code
rebuilds the layer from them, all but ``recompute_states``, a training-time choice of memory against time
(rla_convert.config.TRAINING_ONLY) that a rebuilt layer takes at its default; ``set_recompute_states``
changes it on a loaded model.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.cache import REAL_TOKENS, state_layer
from .ops import kernel_op, prep_ops

CALL_STYLES = ("pair", "tensor", "triple")  # what the host block unpacks: (o, weights) | o | (o, None, cache)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the last (head) dimension, weight named like transformers' and fla's.

    Llama's order by default: normalise in fp32, cast back, then scale. ``scale_in_fp32`` scales before the cast
    (OLMo2's and Gemma3's order); ``offset`` is added to the weight there (Gemma3 scales by 1 + weight)."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0, scale_in_fp32: bool = False):
        super().__init__()
        if offset and not scale_in_fp32:
            raise ValueError("a norm weight offset is applied in fp32: it needs scale_in_fp32=True")
        self.weight = nn.Parameter(torch.ones(dim) - offset)  # the neutral weight: a scale of 1
        self.eps, self.offset, self.scale_in_fp32 = eps, offset, scale_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scale_in_fp32:
            return (x * (self.weight.float() + self.offset)).to(dtype)
        return self.weight * x.to(dtype)


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _short_conv(x, weight, previous, seq_starts):
    """Depthwise causal conv, x [B, T, C], weight [C, W]; ``previous`` [B, W-1, C] is the left context.

    ``seq_starts`` (packed batches) gives each token's position inside its own sequence, so taps never
    reach across a sequence boundary. Returns (output, the last W-1 inputs for the next call).
    """
    width = weight.shape[-1]
    if previous is None:
        previous = x.new_zeros(x.shape[0], width - 1, x.shape[-1])
    padded = torch.cat([previous.to(x.dtype), x], dim=1)
    windows = padded.unfold(1, width, 1)  # [B, T, C, W]: inputs t-W+1 .. t
    if seq_starts is not None:
        lag = torch.arange(width - 1, -1, -1, device=x.device)  # tap w reads the input `lag[w]` tokens back
        windows = windows * (seq_starts[:, None] >= lag)[None, :, None, :].to(x.dtype)
    return (windows * weight).sum(-1), padded[:, -(width - 1):]


class ResidualAttention(nn.Module):
    # Debug mode: the kernels also check values (gates in range, finite inputs), at a device sync per call.
    # On for every layer with RLA_CONVERT_DEBUG=1, or per layer by setting ``layer.debug = True``.
    debug = os.environ.get("RLA_CONVERT_DEBUG") == "1"
    # The q/k feature map and the gates in one Triton launch each (rla_kernels.feature_map, .gates) instead of
    # ~21 PyTorch ops: None uses them on CUDA when no gradient is wanted (the feature map also needs no short
    # conv); True also on CPU under TRITON_INTERPRET=1 (tests); False never.
    fused_prep: bool | None = None

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        variant: str = "rdn",
        num_k_heads: int | None = None,
        num_v_heads: int | None = None,
        head_v_dim: int | None = None,
        layer_idx: int = 0,
        clip: float | None = 1.0,
        residual: str = "clip",
        conv_size: int = 0,
        qk_norm: bool = False,
        qk_norm_over: str = "head",
        qk_norm_offset: float = 0.0,
        qk_norm_fp32: bool = False,
        norm_eps: float = 1e-6,
        rope: bool = False,
        rope_dim: int | None = None,
        rope_cos_interleaved: bool = False,
        q_lora_rank: int | None = None,
        kv_lora_rank: int | None = None,
        latent_norm_eps: float = 1e-6,
        output_gate: bool = False,
        output_scale: bool = False,
        qkv_bias: bool = False,
        o_bias: bool = False,
        b_bias: bool = True,
        call_style: str = "pair",
        backend: str | None = None,
        recompute_states: bool = True,
    ):
        super().__init__()
        if variant not in ("rla", "rdn", "gdn"):
            raise ValueError(f"variant must be 'rla', 'rdn' or 'gdn', got {variant!r}")
        if call_style not in CALL_STYLES:
            raise ValueError(f"call_style must be one of {CALL_STYLES}, got {call_style!r}")
        self.variant, self.attention_kind = variant, variant
        self.hidden_size, self.head_dim = hidden_size, head_dim
        self.num_q_heads = num_heads
        self.num_k_heads = num_k_heads or num_heads
        self.num_v_heads = num_v_heads or self.num_k_heads
        self.num_heads = max(self.num_q_heads, self.num_v_heads)
        for name, count in (("q", self.num_q_heads), ("k", self.num_k_heads), ("v", self.num_v_heads)):
            if self.num_heads % count:
                raise ValueError(f"{name} heads ({count}) must divide the layer's {self.num_heads} heads")
        self.head_v_dim = head_v_dim or head_dim
        self.layer_idx, self.clip, self.residual = layer_idx, clip, residual
        self.conv_size, self.rope, self.call_style, self.backend = conv_size, rope, call_style, backend
        # partial RoPE (GPT-NeoX, Phi, StableLM, Phi-3 with partial_rotary_factor < 1, GLM, Nemotron): the host's
        # cos/sin cover rope_dim features of each head, the rest pass unrotated. The layer keeps each head's q/k
        # features as [rotated first half, passed first half, rotated second half, passed second half] (the
        # registry stores the projections' rows so: the order changes nothing SiLU, the L2 norm or q.k see), so
        # that with cos = 1 and sin = 0 over the passed features it is the whole-head rotation, on either feature
        # map path (the one-launch kernel included). None: the whole head.
        if rope_dim is not None and not (0 < rope_dim <= head_dim and rope_dim % 2 == 0):
            raise ValueError(f"rope_dim must be even and in (0, head_dim={head_dim}], got {rope_dim}")
        self.rope_dim = None if rope_dim == head_dim else rope_dim
        # Cohere's host hands cos/sin laid out per rotary pair (c0 c0 c1 c1 ...) for pairs (2i, 2i + 1); with q/k
        # rows reordered by the adapter (evens, then odds) the same rotation is Llama's on cos/sin laid out in halves
        self.rope_cos_interleaved = rope_cos_interleaved
        # False: the op's forward keeps its chunk-state walk for the backward instead of the backward rerunning it
        # (rla_kernels.rdn's docstring: faster training for memory held until the backward); read at each call
        self.recompute_states = recompute_states
        self.scale = head_dim ** -0.5
        H = self.num_heads

        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        if kv_lora_rank is None:
            if q_lora_rank is not None:
                raise ValueError("q_lora_rank is an MLA argument: it needs kv_lora_rank")
            self.q_proj = nn.Linear(hidden_size, self.num_q_heads * head_dim, bias=qkv_bias)
            self.k_proj = nn.Linear(hidden_size, self.num_k_heads * head_dim, bias=qkv_bias)
            self.v_proj = nn.Linear(hidden_size, self.num_v_heads * self.head_v_dim, bias=qkv_bias)
        else:
            self._latent_projections(hidden_size, rope_dim, latent_norm_eps, qkv_bias, qk_norm)
        self.o_proj = nn.Linear(H * self.head_v_dim, hidden_size, bias=o_bias)
        self.a_proj = nn.Linear(hidden_size, H, bias=False)
        self.b_proj = nn.Linear(hidden_size, H, bias=b_bias)
        if variant != "gdn":  # the baseline has no residual branch to gate
            self.gamma_proj = nn.Linear(hidden_size, H, bias=True)
        self.A_log = nn.Parameter(torch.zeros(H))
        self.dt_bias = nn.Parameter(torch.zeros(H))
        if qk_norm_over not in ("head", "all"):
            raise ValueError(f"qk_norm_over must be 'head' or 'all', got {qk_norm_over!r}")
        # "head": one RMSNorm per head (Qwen3, Gemma3); "all": one over all heads of the projection at once (OLMo2)
        self.qk_norm_over = qk_norm_over
        if qk_norm:
            over_all = qk_norm_over == "all"
            # the host's norm order and offset (HeadRMSNorm): Gemma3 and OLMo2 scale in fp32, Gemma3 by 1 + weight
            order = dict(offset=qk_norm_offset, scale_in_fp32=qk_norm_fp32)
            self.q_norm = HeadRMSNorm(head_dim * (self.num_q_heads if over_all else 1), norm_eps, **order)
            self.k_norm = HeadRMSNorm(head_dim * (self.num_k_heads if over_all else 1), norm_eps, **order)
        if conv_size:
            for name, channels in (("q", self.num_q_heads * head_dim), ("k", self.num_k_heads * head_dim),
                                   ("v", self.num_v_heads * self.head_v_dim)):
                setattr(self, f"{name}_conv1d", nn.Conv1d(channels, channels, conv_size, groups=channels, bias=False))
        if output_scale:  # a learnable per-head gain on the op's output (softmax sources; see rla_convert.init)
            self.o_scale = nn.Parameter(torch.ones(H))
        if output_gate:
            self.g_proj = nn.Linear(hidden_size, self.num_v_heads * self.head_v_dim, bias=False)
            self.o_norm = HeadRMSNorm(self.head_v_dim, norm_eps)
        self._op = kernel_op(variant, backend)
        self._prep = prep_ops()
        self.reset_gates()

    def _latent_projections(self, hidden_size, rope_dim, eps, bias, qk_norm):
        """MLA's projections under its own names (bias as MLA: on the two that read x, ``qkv_bias``)."""
        if rope_dim is None or (self.head_dim - rope_dim) % 2:
            raise ValueError(f"MLA needs rope_dim (the shared key part k_rot's width) with an even rest of the "
                             f"{self.head_dim} head features, got {rope_dim}")
        if not self.num_q_heads == self.num_k_heads == self.num_v_heads:
            raise ValueError("MLA's q, k and v have one head count: leave num_k_heads and num_v_heads out")
        if qk_norm:
            raise ValueError("MLA has no q/k norm: qk_norm=True does not go with kv_lora_rank")
        H, D, rank = self.num_heads, self.head_dim, self.q_lora_rank
        self.mla_rope_dim = rope_dim  # kept apart from self.rope_dim, which is None for a whole-head RoPE
        if rank is None:
            self.q_proj = nn.Linear(hidden_size, H * D, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, rank, bias=bias)
            self.q_a_layernorm = HeadRMSNorm(rank, eps)
            self.q_b_proj = nn.Linear(rank, H * D, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, self.kv_lora_rank + rope_dim, bias=bias)
        self.kv_a_layernorm = HeadRMSNorm(self.kv_lora_rank, eps)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, H * (D - rope_dim + self.head_v_dim), bias=False)

    def _latent_qkv(self, x):
        """MLA's q, k, v [B, T, H, dim], each head's q/k features in the layer's partial-RoPE order (rope_dim): q's
        rows are stored so; k is assembled so from the shared k_rot and the head's k_nope."""
        B, T, _ = x.shape
        H, D, r = self.num_heads, self.head_dim, self.mla_rope_dim
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, r], dim=-1)
        k_nope, v = self.kv_b_proj(self.kv_a_layernorm(latent)).view(B, T, H, -1).split([D - r, self.head_v_dim], -1)
        # [k_rot first half, k_nope first half, k_rot second half, k_nope second half]: the one k_rot broadcast to
        # every head (RoPE then gives each head's copy the same rotation: the shared rotated k_rot, as MLA's)
        k = torch.cat([k_rot.reshape(B, T, 1, 2, r // 2).expand(B, T, H, 2, r // 2),
                       k_nope.reshape(B, T, H, 2, (D - r) // 2)], dim=-1)
        return q.view(B, T, H, D), k.reshape(B, T, H, D), v.contiguous()

    def reset_gates(self) -> None:
        """A neutral starting point; rla_convert.init applies the named strategies."""
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(1, 16)))
            dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            for proj in (self.a_proj, self.b_proj, getattr(self, "gamma_proj", None)):
                if proj is None:  # the gdn baseline has no gamma gate
                    continue
                nn.init.normal_(proj.weight, std=0.02)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, position_embeddings=None,
                cache_params=None, **kwargs):
        # the cache arrives as past_key_values (transformers <= 5.2x), cache (5.24+), layer_past (GPT-NeoX) or
        # cache_params (fla, Mamba-style)
        cache = next((c for c in (past_key_values, kwargs.get("cache"), kwargs.get("layer_past"), cache_params)
                      if c is not None), None)
        state = state_layer(cache, self.layer_idx) if cache is not None else None
        B, T, _ = hidden_states.shape
        valid = self._real_tokens(attention_mask, cache, state, B, T, hidden_states.device)
        cu_seqlens = kwargs.get("cu_seqlens", kwargs.get("cu_seq_lens_q"))
        seq_starts = self._positions_in_sequence(cu_seqlens, T, hidden_states.device) if cu_seqlens is not None else None

        x = hidden_states
        norm_all = hasattr(self, "q_norm") and self.qk_norm_over == "all"
        if self.kv_lora_rank is not None:
            q, k, v = self._latent_qkv(x)
        else:
            q, k = self.q_proj(x), self.k_proj(x)
            if norm_all:
                q, k = self.q_norm(q), self.k_norm(k)
            q = q.view(B, T, self.num_q_heads, self.head_dim)
            k = k.view(B, T, self.num_k_heads, self.head_dim)
            v = self.v_proj(x).view(B, T, self.num_v_heads, self.head_v_dim)
        if hasattr(self, "q_norm") and not norm_all:
            q, k = self.q_norm(q), self.k_norm(k)
        rope_ok = not self.rope or position_embeddings is not None  # else the PyTorch path says what is missing
        if self.rope and position_embeddings is not None:
            position_embeddings = self._whole_head_rope(*position_embeddings)
        if not self.conv_size and rope_ok and self._fused(q, k, *(position_embeddings if self.rope else ())):
            cos, sin = position_embeddings if self.rope else (None, None)
            q, k = (self._prep.feature_map(t, cos, sin, valid, self.num_heads, v.dtype) for t in (q, k))
            v = self._repeat(v * valid[:, :, None, None].to(v.dtype) if valid is not None else v)
        else:
            q, k, v = self._feature_maps(q, k, v, valid, position_embeddings, state, seq_starts)

        gate_dtype = torch.promote_types(x.dtype, torch.float32)  # decay in fp32 at least: bf16 would round a to 1
        a, b = self.a_proj(x), self.b_proj(x)
        c = self.gamma_proj(x) if hasattr(self, "gamma_proj") else None
        if self._fused(a, b, *([c] if c is not None else []), self.A_log, self.dt_bias):
            g, beta, gamma = self._prep.gates(a, b, c, self.A_log, self.dt_bias, valid)
        else:
            g, beta, gamma = self._gates(a, b, c, valid, gate_dtype)

        initial = state.recurrent_state if state is not None else None
        # only when not the default, so a default call is the op's plain call
        keep = {} if self.recompute_states else {"recompute_states": False}
        o, final = self._op(q, k, v, g, beta, gamma, scale=self.scale, clip=self.clip, residual=self.residual,
                            initial_state=initial, output_final_state=state is not None, cu_seqlens=cu_seqlens,
                            validate=self.debug, **keep)
        if state is not None:
            state.write_recurrent_state(tuple(s.to(gate_dtype) for s in final))
            state.count_tokens(T, x.device)
        if hasattr(self, "o_scale"):
            o = o * self.o_scale.to(o.dtype)[:, None]

        if hasattr(self, "g_proj"):
            gate = self.g_proj(x).view(B, T, self.num_v_heads, self.head_v_dim)
            o = self.o_norm(o) * F.silu(self._repeat(gate))
        o = self.o_proj(o.reshape(B, T, -1).to(x.dtype))
        if self.call_style == "tensor":
            return o
        if self.call_style == "triple":
            return o, None, cache
        return o, None

    def _whole_head_rope(self, cos, sin):
        """The host's (cos, sin) as the layer's whole-head rotation of its feature order takes them: Cohere's pair
        layout relaid in halves, a partial RoPE padded with cos = 1, sin = 0 over the passed features."""
        if self.rope_cos_interleaved:
            cos, sin = (torch.cat([t[..., ::2], t[..., ::2]], dim=-1) for t in (cos, sin))
        width = self.rope_dim or self.head_dim
        if cos.shape[-1] != width:
            raise ValueError(f"the model's position_embeddings are {cos.shape[-1]} wide; this layer rotates "
                             f"{width} of its {self.head_dim} head features")
        if self.rope_dim is not None:
            half, passed = self.rope_dim // 2, (self.head_dim - self.rope_dim) // 2
            one, zero = cos.new_ones(*cos.shape[:-1], passed), sin.new_zeros(*sin.shape[:-1], passed)
            cos = torch.cat([cos[..., :half], one, cos[..., half:], one], dim=-1)
            sin = torch.cat([sin[..., :half], zero, sin[..., half:], zero], dim=-1)
        return cos, sin

    def _feature_maps(self, q, k, v, valid, position_embeddings, state, seq_starts):
        """RoPE, the padding mask, the short conv, SiLU and the L2 norm of q and k (v: mask, conv, SiLU), then
        the heads repeated to the layer's count, in PyTorch ops (rla_kernels.feature_map is the one-launch
        version, used for inference on CUDA).

        q's and k's heads go through RoPE, the mask, SiLU and the L2 norm as one tensor: the same math in half
        the kernel launches (eager decoding is bound by launches). fp32 results are unchanged; in bf16 the
        norm's row sums may round differently in the last bit (checked on CPU against the per-tensor version:
        equal in fp32, within one bf16 ulp of the output otherwise).
        """
        num_q = q.shape[2]
        qk = torch.cat([q, k], dim=2)
        if self.rope:
            if position_embeddings is None:
                raise ValueError("this layer keeps RoPE but the model passed no position_embeddings")
            cos, sin = (t.unsqueeze(2) for t in position_embeddings)  # whole-head tables (_whole_head_rope)
            qk = qk * cos + _rotate_half(qk) * sin
        if valid is not None:
            keep = valid[:, :, None, None]  # each in its own dtype: under autocast x is fp32, q/k/v bf16
            qk, v = qk * keep.to(qk.dtype), v * keep.to(v.dtype)
        # under autocast RoPE's fp32 cos/sin promote q and k while v stays bf16: the kernels take one dtype
        if self.conv_size:  # separate convolution weights for q, k and v
            q, k = qk[:, :, :num_q], qk[:, :, num_q:]
            q, k, v = (self._conv(name, t, state, seq_starts) for name, t in (("q", q), ("k", k), ("v", v)))
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
            q, k = _l2norm(q).to(v.dtype), _l2norm(k).to(v.dtype)
        else:
            qk = _l2norm(F.silu(qk)).to(v.dtype)
            # contiguous, as the kernels take them (and as before: the torch backend's matmuls round by layout)
            q, k = qk[:, :, :num_q].contiguous(), qk[:, :, num_q:].contiguous()
        return tuple(self._repeat(t) for t in (q, k, v))

    def _fused(self, *tensors) -> bool:
        """Whether the one-launch inference kernels may run on these tensors: on CUDA (or forced), not float64
        (they compute in float32), without autograd wanting their gradients, outside torch.compile."""
        wanted = self.fused_prep
        if wanted is False or self._prep is None or (wanted is None and not tensors[0].is_cuda):
            return False
        if tensors[0].dtype == torch.float64:
            return False
        if torch.compiler.is_compiling():
            return False
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    def _gates(self, a, b, c, valid, gate_dtype):
        """g (log decay), beta and gamma from the projections a, b, c of x, in PyTorch ops (rla_kernels.gates is
        the one-launch version)."""
        g = -self.A_log.to(gate_dtype).exp() * F.softplus(a.to(gate_dtype) + self.dt_bias.to(gate_dtype))
        beta = torch.sigmoid(b)
        gamma = torch.sigmoid(c) if c is not None else None
        if valid is not None:  # a padded token: a = 1, nothing written
            keep = valid[..., None]
            g, beta = g * keep, beta * keep.to(beta.dtype)
            gamma = gamma * keep.to(gamma.dtype) if gamma is not None else None
        return g, beta, gamma

    def _conv(self, name, x, state, seq_starts):
        B, T, heads, dim = x.shape
        conv = getattr(self, f"{name}_conv1d")
        previous = state.conv_state.get(name) if state is not None else None
        out, tail = _short_conv(x.reshape(B, T, heads * dim), conv.weight.squeeze(1), previous, seq_starts)
        if state is not None:
            state.write_conv_state(name, tail)
        return out.view(B, T, heads, dim)

    def _repeat(self, x):
        times = self.num_heads // x.shape[2]
        return x if times == 1 else x.repeat_interleave(times, dim=2)

    @staticmethod
    def _real_tokens(mask, cache, state, B, T, device):
        """``_valid_tokens``, or what the converted model's forward read off its 2-D mask and left on the cache
        (the only answer where a static cache's mask spans its whole length). Called directly on a static cache
        with a 4-D mask, the current tokens' columns start at the tokens seen so far."""
        handed = getattr(cache, REAL_TOKENS, None)
        if isinstance(handed, torch.Tensor) and handed.shape == (B, T):
            return handed.to(device=device, dtype=torch.float32)  # made once for the model: layers may sit elsewhere
        # a host count: a captured graph replays the column it had when captured. Right for graphed decoding, which
        # takes no padding (every earlier column of a causal mask is open); a padded replay would need the device count
        first = state.seen_tokens if state is not None and state.static_length is not None else None
        return ResidualAttention._valid_tokens(mask, B, T, first)

    @staticmethod
    def _valid_tokens(mask, B, T, first=None):
        """[B, T] float mask of real (non-padding) tokens among the current ones, or None without a mask. The
        current tokens are the last T key columns of a 4-D mask, or those from ``first`` on (a static cache's).

        An all-ones mask is applied too (a multiply by 1) rather than tested for: ``valid.all()`` is a
        device sync each call, and under torch.compile a graph break in every decode step.
        """
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):  # a flex BlockMask (attn_implementation="flex_attention")
            return ResidualAttention._block_mask_diagonal(mask, B, T, first)
        if mask.dim() == 4:  # [B, 1, Tq, Tkv]: a token is real if it may attend to itself (the diagonal). Not the
            # last query row: under a sliding-window (or chunked) mask that row also hides the keys outside its
            # window, real tokens that a linear layer must read (the window itself is dropped)
            columns = mask[..., -T:] if first is None else mask[..., first:first + T]
            if mask.shape[-2] == T and columns.shape[-1] == T:
                row = columns[:, 0].diagonal(dim1=-2, dim2=-1)
            else:
                row = columns[:, 0, -1]
            valid = row if row.dtype == torch.bool else row == 0
        elif mask.dim() == 2:
            valid = mask[:, -T:].bool()
        else:
            return None
        if valid.shape != (B, T):
            return None
        return valid.float()

    @staticmethod
    def _block_mask_diagonal(mask, B, T, first=None):
        """``_valid_tokens`` of a flex BlockMask: its mask function asked whether each current token may attend to
        itself (the 4-D mask's diagonal), the current tokens the last T of its key positions (or from ``first`` on).
        Its mask functions (transformers' causal, padding, sliding-window ones, offsets included) are elementwise
        tensor code, so one broadcast call over [B, T] indices answers for every token."""
        mask_mod, lengths = getattr(mask, "mask_mod", None), getattr(mask, "seq_lengths", None)
        if mask_mod is None or lengths is None or lengths[0] != T or lengths[1] < T:
            raise ValueError(f"attention_mask: a flex BlockMask whose query length is this call's {T} tokens (and "
                             f"its key length at least that) is read for padding; got seq_lengths {lengths}. "
                             f"Load the model with attn_implementation='sdpa' or 'eager' instead")
        device = mask.kv_num_blocks.device
        b = torch.arange(B, device=device)[:, None]
        q = torch.arange(T, device=device)[None, :]
        valid = mask_mod(b, torch.zeros_like(b), q, q + (lengths[1] - T if first is None else first))
        return torch.as_tensor(valid, device=device).to(torch.bool).expand(B, T).float()

    @staticmethod
    def _positions_in_sequence(cu_seqlens, T, device):
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        idx = torch.arange(T, device=device)
        start = cu[torch.searchsorted(cu, idx, right=True) - 1]
        return idx - start

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, heads={self.num_heads} (q {self.num_q_heads}, k {self.num_k_heads}, "
                f"v {self.num_v_heads}), head_dim={self.head_dim}, clip={self.clip}, conv={self.conv_size}, rope={self.rope}"
                + (f" ({self.rope_dim} of {self.head_dim})" if self.rope and self.rope_dim else "")
                + (f", mla (q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, head_v_dim="
                   f"{self.head_v_dim})" if self.kv_lora_rank is not None else "")
                + ("" if self.recompute_states else ", recompute_states=False"))


def set_recompute_states(model: nn.Module, recompute_states: bool) -> int:
    """Set ``recompute_states`` on every ResidualAttention layer of ``model`` (e.g. a reloaded export, before
    fine-tuning it: exports do not store the choice); returns how many layers were set."""
    if not isinstance(recompute_states, bool):
        raise TypeError(f"recompute_states must be True or False, got {recompute_states!r}")
    layers = [m for m in model.modules() if isinstance(m, ResidualAttention)]
    for layer in layers:
        layer.recompute_states = recompute_states
    return len(layers)

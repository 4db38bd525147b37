"""ResidualAttention: its plumbing against the float64 oracle, and state carrying (decode, packed, padded)."""
import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from rla_convert.layers import ResidualAttention
from rla_kernels import naive_recurrent_rdn, naive_recurrent_rla


def rel(x, ref):
    assert torch.isfinite(x).all()
    return ((x - ref).norm() / ref.norm()).item()


def make_layer(variant="rdn", **kw):
    args = dict(hidden_size=32, num_heads=4, num_k_heads=2, head_dim=8, variant=variant)
    args.update(kw)
    layer = ResidualAttention(**args).double()
    with torch.no_grad():  # random gates so every term matters
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def _op_inputs(layer, x):
    """What the layer hands its op, recomputed from its weights (4 query heads, 2 shared k/v heads, dim 8)."""
    B, T = x.shape[:2]
    q = layer.q_proj(x).view(B, T, 4, 8)
    k = layer.k_proj(x).view(B, T, 2, 8).repeat_interleave(2, dim=2)
    v = layer.v_proj(x).view(B, T, 2, 8).repeat_interleave(2, dim=2)
    l2 = lambda t: t * torch.rsqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)  # noqa: E731  (fla's l2norm, eps inside)
    g = -layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias)
    return l2(F.silu(q)), l2(F.silu(k)), v, g, torch.sigmoid(layer.b_proj(x))


def _gated_delta_rule_loop(q, k, v, g, beta, scale, S0):
    """S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, o_t = scale * S_t^T q_t, token by token ([K, V]
    states); [N, T, H, *] inputs, one sequence per row. Returns (o, S_T)."""
    S, outs = S0.clone(), []
    for t in range(q.shape[1]):
        S = g[:, t].exp()[..., None, None] * S
        error = v[:, t] - torch.einsum("nhk,nhkv->nhv", k[:, t], S)
        S = S + torch.einsum("nhk,nhv->nhkv", k[:, t], beta[:, t, :, None] * error)
        outs.append(scale * torch.einsum("nhk,nhkv->nhv", q[:, t], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_layer_equals_oracle_composition(variant):
    layer = make_layer(variant)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    out, _ = layer(x)
    q, k, v, g, beta = _op_inputs(layer, x)
    gamma = torch.sigmoid(layer.gamma_proj(x))
    oracle = naive_recurrent_rla if variant == "rla" else naive_recurrent_rdn
    o, _ = oracle(q, k, v, g, beta, gamma, scale=8 ** -0.5, clip=1.0)
    ref = layer.o_proj(o.reshape(2, 7, -1))
    assert rel(out, ref) < 1e-8


def test_rope_and_feature_maps_of_q_and_k_run_as_one_pass_and_equal_the_oracle_composition():
    layer = make_layer("rdn", rope=True)
    B, T = 2, 7
    x = torch.randn(B, T, 32, dtype=torch.float64)
    angles = torch.arange(T, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = torch.cat([angles, angles], -1)[None].expand(B, T, 8)
    cos, sin = angles.cos(), angles.sin()
    with torch.profiler.profile() as prof:
        out, _ = layer(x, position_embeddings=(cos, sin))
    names = [e.name for e in prof.events()]
    assert names.count("aten::silu") == 1 and names.count("aten::rsqrt") == 1  # one pass for q's and k's heads

    rotate = lambda t: torch.cat([-t[..., 4:], t[..., :4]], -1)  # noqa: E731
    c, s = cos[:, :, None], sin[:, :, None]
    q = layer.q_proj(x).view(B, T, 4, 8)
    k = layer.k_proj(x).view(B, T, 2, 8)
    q, k = q * c + rotate(q) * s, (k * c + rotate(k) * s).repeat_interleave(2, dim=2)
    l2 = lambda t: t * torch.rsqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    _, _, v, g, beta = _op_inputs(layer, x)
    o, _ = naive_recurrent_rdn(l2(F.silu(q)), l2(F.silu(k)), v, g, beta, torch.sigmoid(layer.gamma_proj(x)),
                               scale=8 ** -0.5, clip=1.0)
    assert rel(out, layer.o_proj(o.reshape(B, T, -1))) < 1e-8


def test_gdn_baseline_is_the_plain_gated_delta_rule():
    layer = make_layer("gdn")
    assert not hasattr(layer, "gamma_proj")
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    out, _ = layer(x)
    q, k, v, g, beta = _op_inputs(layer, x)
    o, _ = _gated_delta_rule_loop(q, k, v, g, beta, 8 ** -0.5, torch.zeros(2, 4, 8, 8, dtype=torch.float64))
    ref = layer.o_proj(o.reshape(2, 7, -1))
    assert rel(out, ref) < 1e-5  # the reference implementation computes in float32


def test_gdn_op_with_scale_states_and_packed_sequences():
    from rla_convert.layers.gdn_op import gated_delta_rule

    H, K, V, lengths = 2, 8, 6, (5, 3)
    q, k = F.normalize(torch.randn(1, 8, H, K, dtype=torch.float64), dim=-1), F.normalize(torch.randn(1, 8, H, K, dtype=torch.float64), dim=-1)
    v, g, beta = torch.randn(1, 8, H, V, dtype=torch.float64), F.logsigmoid(torch.randn(1, 8, H, dtype=torch.float64)), torch.rand(1, 8, H, dtype=torch.float64)
    S0 = torch.randn(2, H, K, V, dtype=torch.float64)
    o, (S,) = gated_delta_rule(q, k, v, g, beta, scale=0.3, initial_state=(S0,), output_final_state=True,
                               cu_seqlens=torch.tensor([0, 5, 8]))
    start = 0
    for n, length in enumerate(lengths):  # each sequence from its own state
        span = slice(start, start + length)
        o_ref, S_ref = _gated_delta_rule_loop(q[:, span], k[:, span], v[:, span], g[:, span], beta[:, span], 0.3, S0[n:n + 1])
        for t in range(length):
            assert rel(o[:, start + t], o_ref[:, t]) < 1e-5
        assert rel(S[n:n + 1], S_ref) < 1e-5
        start += length


@pytest.mark.parametrize("tokens", [1, 3])
def test_gdn_op_decode_steps_on_the_cpu_follow_the_recurrence(tokens):
    # a few tokens from a state without autograd take the token-by-token reference, not the chunked one
    from rla_convert.layers import gdn_op

    B, H, K, V = 2, 2, 8, 6
    q, k = (F.normalize(torch.randn(B, tokens, H, K, dtype=torch.float64), dim=-1) for _ in range(2))
    v, beta = torch.randn(B, tokens, H, V, dtype=torch.float64), torch.rand(B, tokens, H, dtype=torch.float64)
    g, S0 = F.logsigmoid(torch.randn(B, tokens, H, dtype=torch.float64)), torch.randn(B, H, K, V, dtype=torch.float64)
    o, (S,) = gdn_op.gated_delta_rule(q, k, v, g, beta, scale=0.3, initial_state=(S0,), output_final_state=True)
    o_ref, S_ref = _gated_delta_rule_loop(q, k, v, g, beta, 0.3, S0)
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5
    from transformers.models.qwen3_next import modeling_qwen3_next

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_qwen3_next, "torch_chunk_gated_delta_rule", lambda *a, **kw: calls.append(1))
        gdn_op.gated_delta_rule(q, k, v, g, beta, scale=0.3, initial_state=(S0,), output_final_state=True)
    assert calls == []


@pytest.mark.parametrize("variant, tol", [("rla", 1e-10), ("rdn", 1e-10), ("gdn", 1e-5)])
def test_prefill_then_decode_equals_full_sequence(variant, tol):
    layer = make_layer(variant, conv_size=4, qk_norm=True, output_gate=True)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    full, _ = layer(x)
    cache = DynamicCache()
    pieces = [layer(x[:, a:b], past_key_values=cache)[0] for a, b in ((0, 5), (5, 6), (6, 7), (7, 9), (9, 11))]
    assert rel(torch.cat(pieces, 1), full) < tol
    assert cache.get_seq_length() == 11


@pytest.mark.parametrize("variant", ["rdn", "gdn"])
def test_packed_sequences_equal_separate_runs(variant):
    layer = make_layer(variant, conv_size=3)
    a, b = torch.randn(1, 5, 32, dtype=torch.float64), torch.randn(1, 4, 32, dtype=torch.float64)
    packed, _ = layer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 9]))
    separate = torch.cat([layer(a)[0], layer(b)[0]], 1)
    assert rel(packed, separate) < 1e-10


def test_left_padding_leaves_states_untouched():
    layer = make_layer("rla", conv_size=4)
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, 32, dtype=torch.float64), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    out, _ = layer(padded, attention_mask=mask)
    assert rel(out[:, 3:], layer(x)[0]) < 1e-10


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_sliding_window_mask_is_dropped_and_its_padding_kept(kind):
    # a sliding-window model (Mistral, Gemma2/3, Phi-3...) hands its layers [B, 1, Tq, Tkv] masks whose last row hides
    # the keys outside that query's window: real tokens, which the linear layer reads all of; only padding is left out
    layer = make_layer("rdn", conv_size=3)
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 2, 32, dtype=torch.float64), x], 1)
    i, j = torch.arange(10)[:, None], torch.arange(10)[None]
    allowed = (j <= i) & (i - j < 3) & (j >= 2)  # causal, a window of 3, two left-padding tokens
    mask = allowed if kind == "bool" else torch.zeros(10, 10, dtype=torch.float64).masked_fill(~allowed, -1e30)
    out, _ = layer(padded, attention_mask=mask[None, None])
    assert rel(out[:, 2:], layer(x)[0]) < 1e-10


def test_masked_decode_step_compiles_without_graph_breaks():
    # generate() passes an attention mask every step; reading it must not sync or break the graph
    torch._dynamo.reset()
    layer = make_layer("rdn", conv_size=4).float()
    x = torch.randn(2, 1, 32)
    mask = torch.ones(2, 9, dtype=torch.long)
    step = torch.compile(lambda x, mask: layer(x, attention_mask=mask)[0], fullgraph=True, backend="eager")
    assert rel(step(x, mask).double(), layer(x, attention_mask=mask)[0].double()) < 1e-6
    mask[0, -1] = 0  # the same graph serves a padded step: that token leaves the state alone
    out = step(x, mask)
    assert rel(out.double(), layer(x, attention_mask=mask)[0].double()) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gdn_baseline_on_cuda_runs_fla_and_matches_the_reference(head_dim, monkeypatch):
    # fla's chunk kernel in bf16 (its Hopper guard lifted for the baseline), as training runs it, against
    # transformers' PyTorch reference in fp32: the output and the gradient of EVERY parameter, gates
    # included (fla's #640 concerned the gate and beta gradients), then fla's decode kernel
    from rla_convert.layers import gdn_op

    calls = []
    real_fla = gdn_op._fla
    monkeypatch.setattr(gdn_op, "_fla", lambda *a: calls.append(1) or real_fla(*a))
    torch.manual_seed(0)
    kw = dict(hidden_size=512, num_heads=4, num_k_heads=4, head_dim=head_dim)
    fast = make_layer("gdn", **kw).float().cuda()
    ref = make_layer("gdn", backend="torch", **kw).float().cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 300, 512, device="cuda")
    w = torch.randn(2, 300, 512, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_fast, _ = fast(x)
    (out_fast.float() * w).sum().backward()
    out_ref, _ = ref(x)
    (out_ref * w).sum().backward()
    assert calls, "the CUDA path did not reach fla"
    assert rel(out_fast.float(), out_ref) < 2e-2
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) < 3e-2, name
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        cache = DynamicCache()
        pieces = [fast(x[:, a:b], past_key_values=cache)[0] for a, b in ((0, 150), (150, 151), (151, 152))]
    assert rel(torch.cat(pieces, 1).float(), out_ref[:, :152]) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["rdn", "rla"])
def test_an_mla_layer_at_deepseek_head_dims_runs_the_triton_kernels_as_the_torch_path(variant):
    # DeepSeek-V3's MLA: keys 192 wide (128 + 64 RoPE), values 128: a K unlike V in the Triton kernels, in bf16 as
    # training runs them, against the torch backend in fp32: the output, every parameter's gradient, a decode step
    torch.manual_seed(0)
    kw = dict(hidden_size=256, num_heads=4, num_k_heads=4, head_dim=192, head_v_dim=128, rope=True, rope_dim=64,
              q_lora_rank=64, kv_lora_rank=32)
    fast = make_layer(variant, **kw).float().cuda()
    ref = make_layer(variant, backend="torch", **kw).float().cuda()
    ref.load_state_dict(fast.state_dict())
    x, w = torch.randn(2, 300, 256, device="cuda"), torch.randn(2, 300, 256, device="cuda")
    angles = torch.arange(300, device="cuda")[:, None] * 0.9 ** torch.arange(32, device="cuda")
    rope = tuple(torch.cat([f(angles)] * 2, -1)[None].expand(2, -1, -1) for f in (torch.cos, torch.sin))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_fast, _ = fast(x, position_embeddings=rope)
    (out_fast.float() * w).sum().backward()
    out_ref, _ = ref(x, position_embeddings=rope)
    (out_ref * w).sum().backward()
    assert rel(out_fast.float(), out_ref) < 2e-2
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) < 3e-2, name
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        cache = DynamicCache()
        pieces = [fast(x[:, a:b], position_embeddings=tuple(t[:, a:b] for t in rope), past_key_values=cache)[0]
                  for a, b in ((0, 150), (150, 151), (151, 152))]
    assert rel(torch.cat(pieces, 1).float(), out_ref[:, :152]) < 2e-2


def test_a_mask_keeps_the_kernel_inputs_in_the_autocast_dtype():
    layer = make_layer("rdn").float()
    seen, op = [], layer._op
    layer._op = lambda q, k, v, *a, **kw: seen.append((q.dtype, k.dtype, v.dtype)) or op(q, k, v, *a, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 6, 32), attention_mask=torch.tensor([[1] * 6, [0] + [1] * 5]))
    assert seen == [(torch.bfloat16,) * 3]  # the fp32 residual stream must not promote them through the mask


def test_debug_mode_has_the_kernels_check_values():
    layer = make_layer("rdn").float()
    x = torch.randn(1, 5, 32)
    x[0, 2, 3] = float("nan")
    assert torch.isnan(layer(x)[0]).any()  # by default nothing reads values (no device sync)
    layer.debug = True
    with pytest.raises(ValueError, match="finite"):
        layer(x)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="variant"):
        ResidualAttention(hidden_size=8, num_heads=2, head_dim=4, variant="gla")
    with pytest.raises(ValueError, match="divide"):
        ResidualAttention(hidden_size=8, num_heads=4, num_k_heads=3, head_dim=4)
    with pytest.raises(ValueError, match="rope_dim must be even"):
        ResidualAttention(hidden_size=8, num_heads=2, head_dim=4, rope=True, rope_dim=3)
    with pytest.raises(ValueError, match="qk_norm_over"):
        ResidualAttention(hidden_size=8, num_heads=2, head_dim=4, qk_norm=True, qk_norm_over="heads")
    layer = ResidualAttention(hidden_size=8, num_heads=2, head_dim=4, rope=True, rope_dim=2)
    cos = torch.randn(1, 3, 4)  # a model's cos/sin for whole heads: not what this layer was built for
    with pytest.raises(ValueError, match="position_embeddings are 4 wide; this layer rotates 2 of its 4"):
        layer(torch.randn(1, 3, 8), position_embeddings=(cos, cos))


# -- MLA projections (kv_lora_rank): 4 heads of 12 q/k features (rope_dim 4 of them rotated) and 6 value features -----

def make_mla_layer(variant="rdn", **kw):
    args = dict(num_heads=4, num_k_heads=None, head_dim=12, head_v_dim=6, rope=True, rope_dim=4, q_lora_rank=10,
                kv_lora_rank=8)
    return make_layer(variant, **{**args, **kw})


def _rope_tables(positions, dim=4):
    """cos/sin [B, T, dim] for [B, T] positions, halves alike (transformers' layout)."""
    angles = positions[..., None].double() / 100 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("q_lora_rank", [10, None])
def test_mla_layer_equals_mla_computed_in_its_own_feature_order(q_lora_rank):
    # MLA's way, from the layer's weights: q as [nope | rot], one k_rot head rotated once then broadcast beside each
    # head's k_nope; the layer keeps another order of the same features (SiLU, the L2 norm and q.k do not see it)
    layer = make_mla_layer(q_lora_rank=q_lora_rank)
    B, T, H = 2, 7, 4
    x = torch.randn(B, T, 32, dtype=torch.float64)
    cos, sin = _rope_tables(torch.arange(T).expand(B, T))
    out, _ = layer(x, position_embeddings=(cos, sin))

    q = layer.q_proj(x) if q_lora_rank is None else layer.q_b_proj(layer.q_a_layernorm(layer.q_a_proj(x)))
    q = q.view(B, T, H, 12)  # its rows in the layer's order: [rot first half, nope first half, rot second, nope second]
    q_rot, q_nope = torch.cat([q[..., 0:2], q[..., 6:8]], -1), torch.cat([q[..., 2:6], q[..., 8:12]], -1)
    latent, k_rot = layer.kv_a_proj_with_mqa(x).split([8, 4], -1)
    k_nope, v = layer.kv_b_proj(layer.kv_a_layernorm(latent)).view(B, T, H, 14).split([8, 6], -1)
    rotate = lambda t, c, s: t * c + torch.cat([-t[..., 2:], t[..., :2]], -1) * s  # noqa: E731
    q_rot = rotate(q_rot, cos[:, :, None], sin[:, :, None])
    k_rot = rotate(k_rot, cos, sin)[:, :, None].expand(B, T, H, 4)
    q, k = torch.cat([q_nope, q_rot], -1), torch.cat([k_nope, k_rot], -1)
    l2 = lambda t: t * torch.rsqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    g = -layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias)
    o, _ = naive_recurrent_rdn(l2(F.silu(q)), l2(F.silu(k)), v, g, torch.sigmoid(layer.b_proj(x)),
                               torch.sigmoid(layer.gamma_proj(x)), scale=12 ** -0.5, clip=1.0)
    assert rel(out, layer.o_proj(o.reshape(B, T, -1))) < 1e-8


@pytest.mark.parametrize("variant, kw", [("rdn", {}), ("rla", dict(q_lora_rank=None, conv_size=4, output_gate=True))])
def test_mla_prefill_then_decode_equals_full_sequence(variant, kw):
    layer = make_mla_layer(variant, **kw)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    cos, sin = _rope_tables(torch.arange(11).expand(2, 11))
    full, _ = layer(x, position_embeddings=(cos, sin))
    cache = DynamicCache()
    pieces = [layer(x[:, a:b], past_key_values=cache, position_embeddings=(cos[:, a:b], sin[:, a:b]))[0]
              for a, b in ((0, 5), (5, 6), (6, 7), (7, 9), (9, 11))]
    assert rel(torch.cat(pieces, 1), full) < 1e-10
    assert cache.get_seq_length() == 11


def test_mla_left_padding_leaves_states_untouched():
    layer = make_mla_layer("rla")
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, 32, dtype=torch.float64), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # the real tokens numbered from 0, as the converted model does
    out, _ = layer(padded, attention_mask=mask, position_embeddings=_rope_tables(positions))
    assert rel(out[:, 3:], layer(x, position_embeddings=_rope_tables(torch.arange(6)[None]))[0]) < 1e-10


def test_bad_mla_arguments_are_clear():
    base = dict(hidden_size=8, num_heads=2, head_dim=6, rope=True, rope_dim=2, kv_lora_rank=4)
    with pytest.raises(ValueError, match="q_lora_rank is an MLA argument"):
        ResidualAttention(hidden_size=8, num_heads=2, head_dim=4, q_lora_rank=4)
    with pytest.raises(ValueError, match="MLA needs rope_dim"):
        ResidualAttention(**{**base, "rope_dim": None})
    with pytest.raises(ValueError, match="MLA needs rope_dim .* even rest"):
        ResidualAttention(**{**base, "head_dim": 5})
    with pytest.raises(ValueError, match="one head count"):
        ResidualAttention(**base, num_k_heads=1)
    with pytest.raises(ValueError, match="no q/k norm"):
        ResidualAttention(**base, qk_norm=True)
    assert not hasattr(ResidualAttention(**base), "k_proj")

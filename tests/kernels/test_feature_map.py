"""The one-launch q/k feature map (rla_kernels.feature_map) against its float64 reference, and the layer's
use of it and of rla_kernels.gates."""
from types import SimpleNamespace

import pytest
import torch

from rla_kernels.feature_map import feature_map, feature_map_reference


def _rope(B, T, D, dtype, expanded, shared=False):
    """cos/sin [B, T, D]: one row expanded over the batch, or per row; ``shared``: [1, T, D], as transformers
    passes them (position_ids = cache_position[None])."""
    angles = torch.randn(1 if expanded or shared else B, T, D)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    return (cos.expand(B, T, D), sin.expand(B, T, D)) if expanded else (cos, sin)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("rope", [None, "expanded", "per-batch", "shared"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 3, 9, 64), (1, 5, 2, 2, 96)], ids=["gqa-D64", "D96"])
def test_feature_map_matches_the_float64_reference(dtype, tol, rope, masked, shape):
    B, T, HS, H, D = shape
    x = torch.randn(B, T, HS, D).to(dtype)
    cos, sin = _rope(B, T, D, dtype, rope == "expanded", rope == "shared") if rope else (None, None)
    keep = (torch.rand(B, T) > 0.3).float() if masked else None
    ref = feature_map_reference(x.double(), *(None if t is None else t.double() for t in (cos, sin)), keep, H,
                                torch.float64)
    out = feature_map(x, cos, sin, keep, H, dtype)
    assert out.shape == (B, T, H, D) and out.dtype == dtype and out.is_contiguous()
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol
    if masked:  # a padded token's rows are exactly zero
        assert not out[keep == 0].any()


def test_feature_map_takes_a_strided_view_and_refuses_what_it_cannot_do():
    qkv = torch.randn(2, 3, 5, 16)  # q's heads as a view into a wider projection
    q = qkv[:, :, :3]
    torch.testing.assert_close(feature_map(q), feature_map_reference(q), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="forward-only"):
        feature_map(torch.randn(1, 2, 1, 8, requires_grad=True))
    with pytest.raises(ValueError, match="even head dim"):
        feature_map(torch.randn(1, 2, 1, 7))
    with pytest.raises(ValueError, match="multiple of the source heads"):
        feature_map(torch.randn(1, 2, 2, 8), heads=3)
    with pytest.raises(ValueError, match="cos and sin must be"):
        feature_map(torch.randn(1, 2, 1, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="float64"):
        feature_map(torch.randn(1, 2, 1, 8, dtype=torch.float64))


def _layer(**kw):
    from rla_convert.layers import ResidualAttention

    args = dict(hidden_size=32, num_heads=6, num_k_heads=2, head_dim=16, variant="rdn", rope=True, backend="torch")
    args.update(kw)
    return ResidualAttention(**args)


def _count_calls(layer):
    """Wrap the layer's one-launch kernels so a test sees which ran."""
    calls, prep = [], layer._prep
    layer._prep = SimpleNamespace(
        feature_map=lambda *a, **kw: calls.append("feature_map") or prep.feature_map(*a, **kw),
        gates=lambda *a, **kw: calls.append("gates") or prep.gates(*a, **kw))
    return calls


def test_the_layer_uses_the_one_launch_kernels_for_inference_only_and_gets_the_same_output():
    layer = _layer()
    with torch.no_grad():  # gates that matter: random projections and decays
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    B, T = 2, 9
    x = torch.randn(B, T, 32)
    cos, sin = _rope(B, T, 16, torch.float32, expanded=True)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    calls = _count_calls(layer)

    with torch.no_grad():
        layer.fused_prep = False
        reference, _ = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
        assert not calls
        layer.fused_prep = True
        out, _ = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
        assert calls == ["feature_map", "feature_map", "gates"]  # q, k, then g/beta/gamma
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)

    out_grad, _ = layer(x, attention_mask=mask, position_embeddings=(cos, sin))  # training: PyTorch ops
    assert len(calls) == 3
    out_grad.sum().backward()
    assert layer.q_proj.weight.grad is not None and layer.A_log.grad is not None


def _pytorch_then_fused(layer, x, cos, sin):
    """The layer's output through its PyTorch ops, then through the one-launch kernels (no autograd)."""
    with torch.no_grad():
        layer.fused_prep = False
        reference, _ = layer(x, position_embeddings=(cos, sin))
        layer.fused_prep = True
        out, _ = layer(x, position_embeddings=(cos, sin))
    return reference, out


def test_the_layer_at_batch_2_with_transformers_shared_rope_and_in_float64():
    layer = _layer()
    x = torch.randn(2, 7, 32)
    cos, sin = _rope(2, 7, 16, torch.float32, expanded=False, shared=True)  # [1, T, D] for both rows
    calls = _count_calls(layer)
    reference, out = _pytorch_then_fused(layer, x, cos, sin)
    assert calls == ["feature_map", "feature_map", "gates"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        layer.double()(x.double(), position_embeddings=(cos.double(), sin.double()))  # float64: PyTorch ops only
    assert len(calls) == 3


@pytest.mark.parametrize("rope", [dict(rope_dim=8), dict(rope_cos_interleaved=True)], ids=["partial", "pairs"])
def test_partial_and_pair_laid_rope_take_the_one_launch_kernel_too(rope):
    # both are whole-head rotations once the layer relays the host's cos/sin (ResidualAttention._whole_head_rope)
    layer = _layer(**rope)
    x = torch.randn(2, 7, 32)
    cos, sin = _rope(2, 7, rope.get("rope_dim", 16), torch.float32, expanded=False)
    calls = _count_calls(layer)
    reference, out = _pytorch_then_fused(layer, x, cos, sin)
    assert calls == ["feature_map", "feature_map", "gates"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_trainable_projections_keep_the_gates_in_pytorch_even_with_frozen_decays():
    layer = _layer()
    layer.fused_prep = True
    layer.A_log.requires_grad_(False)
    layer.dt_bias.requires_grad_(False)
    calls = _count_calls(layer)
    out, _ = layer(torch.randn(1, 5, 32), position_embeddings=_rope(1, 5, 16, torch.float32, expanded=True))
    out.sum().backward()  # the gate projections get gradients: no forward-only kernel ran
    assert calls == [] and layer.b_proj.weight.grad is not None


def test_with_a_short_conv_only_the_gates_run_fused():
    layer = _layer(conv_size=4)
    layer.fused_prep = True
    calls = _count_calls(layer)
    with torch.no_grad():
        layer(torch.randn(1, 5, 32), position_embeddings=_rope(1, 5, 16, torch.float32, expanded=True))
    assert calls == ["gates"]  # the conv sits between RoPE and SiLU: the q/k map stays in PyTorch


@pytest.mark.parametrize("q_lora_rank", [8, None])
def test_mla_projections_take_the_one_launch_kernels_too(q_lora_rank):
    # MLA's k (a shared k_rot beside each head's k_nope) reaches the kernel as a plain [B, T, H, D] key
    layer = _layer(num_k_heads=None, head_v_dim=12, rope_dim=8, q_lora_rank=q_lora_rank, kv_lora_rank=8)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 7, 32)
    cos, sin = _rope(2, 7, 8, torch.float32, expanded=False)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    calls = _count_calls(layer)
    with torch.no_grad():
        layer.fused_prep = False
        reference, _ = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
        layer.fused_prep = True
        out, _ = layer(x, attention_mask=mask, position_embeddings=(cos, sin))
    assert calls == ["feature_map", "feature_map", "gates"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_gpu_feature_map_at_smollm2_shapes(dtype, tol):
    B, T, HS, H, D = 2, 300, 3, 9, 64
    x = torch.randn(B, T, HS, D, device="cuda").to(dtype)
    cos, sin = (t.cuda() for t in _rope(B, T, D, dtype, expanded=True))
    keep = (torch.rand(B, T, device="cuda") > 0.1).float()
    ref = feature_map_reference(x.double(), cos.double(), sin.double(), keep, H, torch.float64)
    out = feature_map(x, cos, sin, keep, H, dtype)
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol


def test_a_converted_model_generates_the_same_with_the_one_launch_kernels(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rla_convert.config import ConversionConfig
    from rla_convert.convert import convert_model
    from rla_convert.generate import greedy_generate
    from rla_convert.layers import ResidualAttention

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = convert_model(LlamaForCausalLM(cfg).eval(), ConversionConfig(variant="rdn")).model.eval()
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    monkeypatch.setattr(ResidualAttention, "fused_prep", False)
    expected = greedy_generate(model, ids, max_new_tokens=6, attention_mask=mask).tokens
    monkeypatch.setattr(ResidualAttention, "fused_prep", True)
    assert torch.equal(greedy_generate(model, ids, max_new_tokens=6, attention_mask=mask).tokens, expected)

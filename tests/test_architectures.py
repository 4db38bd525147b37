"""Each transformers architecture the registry maps: its weights land in the new layer exactly, and the layer's q and
k (after the norms and RoPE, before the feature map) are the original module's on the same input; the ones it
cannot map are refused with the reason.

How the two sides are read: the original module's q/k/v are what it hands transformers' attention interface
(``sdpa`` and ``eager`` swapped for a recorder); the converted layer's q|k are the input of its first SiLU (the
feature map's, with no short conv), read through the layer module's ``F``. Both from layer 0, whose input is the
same before and after conversion.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from transformers.modeling_utils import AttentionInterface

import rla_convert.layers.residual_attention as residual_attention
from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.distill.trainer import REUSED_PROJECTIONS
from rla_convert.errors import UserError
from rla_convert.layers import ResidualAttention

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
# Multi-head Latent Attention: heads of 16 q/k features (8 passed, 8 rotated; the rotated k part one shared head) and 12
# value features; layer 0 dense, layer 1 MoE
MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, num_key_value_heads=4)
DEEPSEEK_MOE = dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
                    first_k_dense_replace=1, n_shared_experts=1)


def build(config_cls, model_cls, **kw):
    return lambda: getattr(tf, model_cls)(getattr(tf, config_cls)(**{**SMALL, **kw})).eval()


# name -> (model builder, adapter, how the original's weights map: "llama" | "phi3" | "neox" | "dense" | "glm" |
# "out_proj" | "nope" (Llama's, no RoPE) | "nanochat" | "lfm2" (Qwen3's, out_proj and q/k_layernorm) | "bigcode" |
# "mla" | "mla-interleaved" (MLA, RoPE on pairs (2i, 2i + 1)), rope features rotated (None: all 16))
CASES = {
    "mixtral": (build("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2,
                      sliding_window=4), "llama-family", "llama", None),
    "ministral": (build("MinistralConfig", "MinistralForCausalLM", head_dim=16, sliding_window=4), "llama-family",
                  "llama", None),
    "qwen2-moe": (build("Qwen2MoeConfig", "Qwen2MoeForCausalLM", **MOE, shared_expert_intermediate_size=32),
                  "llama-family", "llama", None),
    "qwen3-moe": (build("Qwen3MoeConfig", "Qwen3MoeForCausalLM", **MOE, head_dim=16), "llama-family", "llama", None),
    "granite": (build("GraniteConfig", "GraniteForCausalLM", attention_multiplier=0.3), "llama-family", "llama", None),
    "starcoder2": (build("Starcoder2Config", "Starcoder2ForCausalLM", sliding_window=4), "llama-family", "llama", None),
    "seed-oss": (build("SeedOssConfig", "SeedOssForCausalLM", head_dim=16, attention_bias=True), "llama-family",
                 "llama", None),
    "olmo": (build("OlmoConfig", "OlmoForCausalLM"), "llama-family", "llama", None),
    "exaone4": (build("Exaone4Config", "Exaone4ForCausalLM", sliding_window=4, sliding_window_pattern=2),
                "llama-family", "llama", None),
    "olmo2": (build("Olmo2Config", "Olmo2ForCausalLM"), "olmo2", "llama", None),
    "olmo3": (build("Olmo3Config", "Olmo3ForCausalLM", sliding_window=4), "olmo2", "llama", None),
    "olmoe": (build("OlmoeConfig", "OlmoeForCausalLM", num_experts=4, num_experts_per_tok=2), "olmo2", "llama", None),
    "smollm3": (build("SmolLM3Config", "SmolLM3ForCausalLM", no_rope_layers=[1, 0]), "llama-family", "llama", None),
    "arcee": (build("ArceeConfig", "ArceeForCausalLM"), "llama-family", "llama", None),
    "granitemoe": (build("GraniteMoeConfig", "GraniteMoeForCausalLM", num_local_experts=4, num_experts_per_tok=2),
                   "llama-family", "llama", None),  # its output holds a cache even with use_cache=False
    "granitemoe-shared": (build("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM", num_local_experts=4,
                                num_experts_per_tok=2, shared_intermediate_size=32), "llama-family", "llama", None),
    "cwm": (build("CwmConfig", "CwmForCausalLM", head_dim=16), "llama-family", "llama", None),
    "apertus": (build("ApertusConfig", "ApertusForCausalLM"), "llama-family", "llama", None),
    "dots1": (build("Dots1Config", "Dots1ForCausalLM", head_dim=16, first_k_dense_replace=2), "llama-family", "llama",
              None),
    "phimoe": (build("PhimoeConfig", "PhimoeForCausalLM", num_local_experts=4, num_experts_per_tok=2),
               "llama-family", "llama", None),
    "minimax": (build("MiniMaxConfig", "MiniMaxForCausalLM", num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                      layer_types=["full_attention", "full_attention"]), "llama-family", "llama", None),
    "jais2": (build("Jais2Config", "Jais2ForCausalLM", head_dim=16), "llama-family", "llama", None),
    "solar-open": (build("SolarOpenConfig", "SolarOpenForCausalLM", head_dim=16), "llama-family", "llama", None),
    "hyperclovax": (build("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", head_dim=16), "llama-family", "llama", None),
    "emu3": (build("Emu3TextConfig", "Emu3ForCausalLM", pad_token_id=0), "llama-family", "llama", None),
    "mellum": (build("MellumConfig", "MellumForCausalLM", head_dim=16), "llama-family", "llama", None),
    "hy-v3": (build("HYV3Config", "HYV3ForCausalLM", head_dim=16), "llama-family", "llama", None),
    "exaone-moe": (build("ExaoneMoeConfig", "ExaoneMoeForCausalLM", sliding_window=4,
                         layer_types=["sliding_attention", "full_attention"]), "llama-family", "llama", None),
    "flex-olmo": (build("FlexOlmoConfig", "FlexOlmoForCausalLM", num_experts=4, num_experts_per_tok=2,
                        pad_token_id=0), "olmo2", "llama", None),
    "vaultgemma": (build("VaultGemmaConfig", "VaultGemmaForCausalLM", head_dim=16, sliding_window=4), "gemma",
                   "llama", None),
    "nemotron": (build("NemotronConfig", "NemotronForCausalLM"), "nemotron", "llama", 8),
    "nemotron-h": (build("NemotronHConfig", "NemotronHForCausalLM", layers_block_type=["attention", "attention"],
                         head_dim=16, use_mamba_kernels=False), "nemotron-h", "nope", None),
    "nanochat": (build("NanoChatConfig", "NanoChatForCausalLM"), "nanochat", "nanochat", None),
    "granite4": (build("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", layer_types=["attention", "attention"],
                       num_local_experts=4, num_experts_per_tok=2, position_embedding_type="rope"), "llama-family",
                 "llama", None),
    "lfm2": (build("Lfm2Config", "Lfm2ForCausalLM", layer_types=["full_attention", "full_attention"]), "lfm2", "lfm2",
             None),
    "lfm2-moe": (build("Lfm2MoeConfig", "Lfm2MoeForCausalLM", layer_types=["full_attention", "full_attention"],
                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1), "lfm2",
                 "lfm2", None),
    "glm4-moe": (build("Glm4MoeConfig", "Glm4MoeForCausalLM", n_routed_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, n_group=1, topk_group=1, use_qk_norm=True), "glm4-moe", "llama", 8),
    "gemma": (build("GemmaConfig", "GemmaForCausalLM", head_dim=16), "gemma", "llama", None),
    "gemma2": (build("Gemma2Config", "Gemma2ForCausalLM", head_dim=16, sliding_window=4), "gemma", "llama", None),
    "gemma3": (build("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16, sliding_window=4), "gemma", "llama", None),
    "glm": (build("GlmConfig", "GlmForCausalLM", head_dim=16), "glm", "glm", 8),
    "glm4": (build("Glm4Config", "Glm4ForCausalLM", head_dim=16, attention_bias=True), "glm", "glm", 8),
    "helium": (build("HeliumConfig", "HeliumForCausalLM", head_dim=16), "glm", "glm", None),
    "ernie4_5": (build("Ernie4_5Config", "Ernie4_5ForCausalLM", head_dim=16), "glm", "glm", None),
    "ernie4_5-moe": (build("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM", head_dim=16, moe_num_experts=4, moe_k=2,
                           moe_intermediate_size=32), "glm", "glm", None),
    "cohere": (build("CohereConfig", "CohereForCausalLM"), "cohere", "glm", None),
    "cohere2": (build("Cohere2Config", "Cohere2ForCausalLM", sliding_window=4), "cohere", "glm", None),
    # a global layer first, with RoPE all the same: a dense prefix layer (force_rope)
    "cohere2-moe": (build("Cohere2MoeConfig", "Cohere2MoeForCausalLM", head_dim=16, sliding_window=4, num_experts=4,
                          num_experts_per_tok=2, moe_intermediate_size=32, mlp_layer_types=["dense", "sparse"],
                          layer_types=["full_attention", "sliding_attention"], prefix_dense_sliding_window_pattern=1,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2), "cohere", "glm", None),
    "ministral3": (build("Ministral3Config", "Ministral3ForCausalLM", head_dim=16, sliding_window=4), "llama-family",
                   "llama", None),
    "phi3": (build("Phi3Config", "Phi3ForCausalLM", partial_rotary_factor=0.5, sliding_window=4), "phi3", "phi3", 8),
    "gpt-neox": (build("GPTNeoXConfig", "GPTNeoXForCausalLM", num_key_value_heads=4, attention_bias=True),
                 "gpt-neox", "neox", 4),
    "phi": (build("PhiConfig", "PhiForCausalLM", num_key_value_heads=4), "phi-stablelm", "dense", 8),
    "stablelm": (build("StableLmConfig", "StableLmForCausalLM", use_qkv_bias=True), "phi-stablelm", "llama", 4),
    "gpt-bigcode": (build("GPTBigCodeConfig", "GPTBigCodeForCausalLM", n_embd=64, n_layer=2, n_head=4), "gpt-bigcode",
                    "bigcode", None),
    "gpt-bigcode-mha": (build("GPTBigCodeConfig", "GPTBigCodeForCausalLM", n_embd=64, n_layer=2, n_head=4,
                              multi_query=False), "gpt-bigcode", "bigcode", None),
    "deepseek-v3": (build("DeepseekV3Config", "DeepseekV3ForCausalLM", **MLA, **DEEPSEEK_MOE, q_lora_rank=24),
                    "mla", "mla-interleaved", 8),
    "deepseek-v3-no-q-lora": (build("DeepseekV3Config", "DeepseekV3ForCausalLM", **MLA, **DEEPSEEK_MOE,
                                    q_lora_rank=None, rope_interleave=False), "mla", "mla", 8),
    "deepseek-v3-plain-rope": (build("DeepseekV3Config", "DeepseekV3ForCausalLM", **MLA, **DEEPSEEK_MOE, q_lora_rank=24,
                                     rope_interleave=False, attention_bias=True), "mla", "mla", 8),
    "deepseek-v3-no-q-lora-interleaved": (build("DeepseekV3Config", "DeepseekV3ForCausalLM", **MLA, **DEEPSEEK_MOE,
                                                q_lora_rank=None), "mla", "mla-interleaved", 8),
    "youtu": (build("YoutuConfig", "YoutuForCausalLM", **MLA, q_lora_rank=24), "mla", "mla-interleaved", 8),
    "glm4-moe-lite": (build("Glm4MoeLiteConfig", "Glm4MoeLiteForCausalLM", **MLA, **DEEPSEEK_MOE, q_lora_rank=24),
                      "mla", "mla-interleaved", 8),
    "minicpm3": (build("MiniCPM3Config", "MiniCPM3ForCausalLM", **MLA, q_lora_rank=24), "mla", "mla", 8),
    "opt": (build("OPTConfig", "OPTForCausalLM", ffn_dim=96, word_embed_proj_dim=64), "opt", "out_proj", None),
    "biogpt": (build("BioGptConfig", "BioGptForCausalLM"), "opt", "out_proj", None),
}
NEW = {"a_proj.weight", "b_proj.weight", "b_proj.bias", "gamma_proj.weight", "gamma_proj.bias", "A_log", "dt_bias",
       "o_scale"}


HALVES_SWAPPED = torch.cat([torch.arange(8, 16), torch.arange(0, 8)])


def deinterleaved(rope_dim, head_dim=16):
    """The feature order of a GLM head in the converted layer: the rotary pairs' evens, their odds, the rest."""
    return list(range(0, rope_dim, 2)) + list(range(1, rope_dim, 2)) + list(range(rope_dim, head_dim))


def partial_order(rope_dim, head_dim=16):
    """A head's features as the layer keeps them under a partial RoPE: rotated first half, passed first half, rotated
    second half, passed second half (cos = 1, sin = 0 over the passed ones make it a whole-head rotation)."""
    half, passed = rope_dim // 2, (head_dim - rope_dim) // 2
    return (list(range(half)) + list(range(rope_dim, rope_dim + passed)) + list(range(half, rope_dim))
            + list(range(rope_dim + passed, head_dim)))


def in_layer_order(t, rope_dim, head_dim=16):
    return t.reshape(-1, head_dim, *t.shape[1:])[:, partial_order(rope_dim)].reshape(t.shape)


def mla_order(layout):
    """An MLA head's 16 q/k features (8 passed, then 8 rotated) in the converted layer's order: the partial-RoPE one
    over [rotated | passed], the rotated pairs' evens then odds where its RoPE rotates pairs."""
    rotated = deinterleaved(8, 8) if layout == "mla-interleaved" else list(range(8))
    return [8 + i for i in rotated[:4]] + list(range(4)) + [8 + i for i in rotated[4:]] + list(range(4, 8))


def expected_mla_weights(m, layout):
    """The MLA layer's entries: the original's as they are, but q's rows per head in the layer's order and, where RoPE
    rotates pairs, k_rot's rows (the last 8 of kv_a_proj_with_mqa) evens then odds."""
    out = {f"{p}.{w}": getattr(getattr(m, p), w) for p in ("q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj",
                                                          "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
           for w in ("weight", "bias") if getattr(m, p) is not None and getattr(getattr(m, p), w, None) is not None}
    q = "q_proj.weight" if "q_proj.weight" in out else "q_b_proj.weight"
    out[q] = out[q].reshape(4, 16, -1)[:, mla_order(layout)].reshape(64, -1)
    rotated = deinterleaved(8, 8) if layout == "mla-interleaved" else list(range(8))
    for name in ("kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.bias"):
        if name in out:
            out[name] = out[name][list(range(16)) + [16 + i for i in rotated]]
    return out


def expected_weights(m, layout, rope_dim):
    """The new layer's reused entries, read from the original module ``m`` independently of the adapters."""
    named = lambda pairs: {k: v for k, v in pairs if v is not None}  # noqa: E731
    if layout.startswith("mla"):
        return expected_mla_weights(m, layout)
    if layout == "phi3":  # [q | k | v] rows: 4 query heads, 2 key/value heads of 16
        w = m.qkv_proj.weight
        return named([("q_proj.weight", w[:64]), ("k_proj.weight", w[64:96]), ("v_proj.weight", w[96:128]),
                      ("o_proj.weight", m.o_proj.weight)])
    if layout == "bigcode":  # one c_attn Linear: multi-query [q (64) | k (16) | v (16)], else per head [q k v]
        w, b = m.c_attn.weight, m.c_attn.bias
        if m.multi_query:
            rows = {"q": torch.arange(64), "k": torch.arange(64, 80), "v": torch.arange(80, 96)}
        else:
            rows = {p: torch.tensor([h * 48 + i * 16 + j for h in range(4) for j in range(16)])
                    for i, p in enumerate("qkv")}
        out = {"o_proj.weight": m.c_proj.weight, "o_proj.bias": m.c_proj.bias}
        for p, r in rows.items():
            out[f"{p}_proj.weight"], out[f"{p}_proj.bias"] = w[r], b[r]
        return out
    if layout == "neox":  # per head [q | k | v]: the rows of head h are h*48 .. h*48+47
        out = {"o_proj.weight": m.dense.weight, "o_proj.bias": m.dense.bias}
        for i, p in enumerate(("q", "k", "v")):
            rows = torch.tensor([h * 48 + i * 16 + j for h in range(4) for j in range(16)])
            out[f"{p}_proj.weight"] = m.query_key_value.weight[rows]
            out[f"{p}_proj.bias"] = m.query_key_value.bias[rows]
        return out
    out_proj = m.dense if layout == "dense" else m.out_proj if layout in ("out_proj", "lfm2") else m.o_proj
    out = named([(f"{p}_proj.{w}", getattr(getattr(m, f"{p}_proj"), w)) for p in "qkv" for w in ("weight", "bias")]
                + [("o_proj.weight", out_proj.weight), ("o_proj.bias", out_proj.bias)])
    if layout == "nanochat":  # weightless q/k norms: ones; RoPE by -theta: each head's q/k row halves exchanged
        out["q_norm.weight"] = out["k_norm.weight"] = torch.ones(16)
        for name in ("q_proj.weight", "k_proj.weight"):
            out[name] = out[name].reshape(-1, 16, out[name].shape[-1])[:, HALVES_SWAPPED].reshape(out[name].shape)
    elif getattr(m, "q_norm", None) is not None:  # as they are (Gemma3's 1 + weight is the layer norm's offset)
        out["q_norm.weight"], out["k_norm.weight"] = m.q_norm.weight, m.k_norm.weight
    elif layout == "lfm2":
        out["q_norm.weight"], out["k_norm.weight"] = m.q_layernorm.weight, m.k_layernorm.weight
    if layout == "glm":
        order = deinterleaved(rope_dim or 16)
        for name in [n for n in out if n[0] in "qk" and "proj" in n]:
            t = out[name]
            out[name] = t.reshape(-1, 16, *t.shape[1:])[:, order].reshape(t.shape)
    return out


def original_qkv(model, ids, monkeypatch):
    """Run ``model``; the q/k/v (each [B, heads, T, 16]) each attention module hands transformers' attention."""
    seen = []

    def record(module, query, key, value, attention_mask, **kwargs):
        seen.append((module, query, key, value))
        # right shape for the output projection (value's head dim: MLA's is not q's); not compared
        return query[..., :value.shape[-1]].transpose(1, 2).contiguous(), None

    with monkeypatch.context() as patch, torch.no_grad():
        for name in ("sdpa", "eager"):
            patch.setitem(AttentionInterface._global_mapping, name, record)
        model(ids, use_cache=False)
    return seen


def converted_qk(model, ids, monkeypatch):
    """Run ``model``; the input of each converted layer's first SiLU (q's heads then k's, before the feature map)
    and its logits."""
    seen = []

    class Functional:
        def __getattr__(self, name):
            return getattr(F, name)

        def silu(self, x):
            seen.append(x)
            return F.silu(x)

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(residual_attention, "F", Functional())
        logits = model(ids, use_cache=False).logits
    return seen, logits


def attention_of(model):
    return next(m for m in model.modules() if "Attention" in type(m).__name__ and not isinstance(m, ResidualAttention))


@pytest.mark.parametrize("name", CASES)
def test_architecture_converts_reusing_its_weights_exactly(name, monkeypatch):
    builder, adapter, layout, rope_dim = CASES[name]
    model = builder()
    with torch.no_grad():  # random norm weights (they start at 1, or 0 for Gemma): a missing offset shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    original = attention_of(model)
    expected = {n: t.detach().clone() for n, t in expected_weights(original, layout, rope_dim).items()}
    mla = layout.startswith("mla")
    if rope_dim and not mla:  # the layer's feature order for a partial RoPE (MLA's: in expected_mla_weights)
        expected = {n: in_layer_order(t, rope_dim) if n[0] in "qk" else t for n, t in expected.items()}
    ids = torch.randint(3, 128, (2, 9))
    module, q, k, v = original_qkv(model, ids, monkeypatch)[0]
    assert module is original

    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.adapter for r in result.report.rows] == [adapter, adapter]
    layer = next(m for m in model.modules() if isinstance(m, ResidualAttention))
    assert (layer.rope, layer.rope_dim) == ((False, None) if layout in ("out_proj", "nope", "bigcode") else
                                            (True, rope_dim))
    if name in ("exaone4", "exaone-moe", "smollm3"):  # a layer with RoPE, then one its config runs without
        assert [m.rope for m in model.modules() if isinstance(m, ResidualAttention)] == [True, False]

    state = layer.state_dict()
    assert set(state) - NEW == set(expected), "reused entries"
    assert set(layer.reused_parameters) <= set(REUSED_PROJECTIONS)  # what distillation assumes of a reloaded layer
    for n, t in expected.items():
        assert torch.equal(state[n], t), n

    if hasattr(layer, "q_norm"):  # the norms alone, before RoPE: the same function of random inputs, bit for bit
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # where the order of scale and cast shows
            q_name, k_name = ("q_layernorm", "k_layernorm") if layout == "lfm2" else ("q_norm", "k_norm")
            for mine, theirs in ((layer.q_norm, getattr(original, q_name)), (layer.k_norm, getattr(original, k_name))):
                mine, theirs = copy.deepcopy(mine).to(dtype), copy.deepcopy(theirs).to(dtype)
                x = torch.randn(2, 5, mine.weight.shape[0], dtype=dtype) * 3
                if not rope_dim:
                    assert torch.equal(mine(x), theirs(x)), (type(theirs).__name__, dtype)
                else:  # the layer's feature order: the mean of squares sums in another order (an ulp; one of the
                    # half types after its cast)
                    order, ulp = partial_order(rope_dim), torch.finfo(dtype).eps
                    torch.testing.assert_close(mine(x[..., order]), theirs(x)[..., order], rtol=ulp, atol=ulp * 4)
    for name in ("q_a_layernorm", "kv_a_layernorm") if mla else ():  # MLA's latent norms, bit for bit
        if getattr(original, name) is not None:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                mine, theirs = (copy.deepcopy(getattr(mod, name)).to(dtype) for mod in (layer, original))
                x = torch.randn(2, 5, mine.weight.shape[0], dtype=dtype) * 3
                assert torch.equal(mine(x), theirs(x)), (name, dtype)

    inputs = []
    layer.register_forward_pre_hook(
        lambda mod, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    seen, logits = converted_qk(model, ids, monkeypatch)
    assert torch.isfinite(logits).all()
    qk = seen[0]  # [B, T, 4 + key heads, 16]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if layout == "glm":
        q, k = q[..., deinterleaved(rope_dim or 16)], k[..., deinterleaved(rope_dim or 16)]
    if layout == "nanochat":
        q, k = q[..., HALVES_SWAPPED], k[..., HALVES_SWAPPED]
    if rope_dim and not mla:
        q, k = q[..., partial_order(rope_dim)], k[..., partial_order(rope_dim)]
    if mla:  # their q and k as [passed 8 | rotated 8] (pairs' evens then odds: their interleaved RoPE's output)
        q, k = q[..., mla_order("mla")], k[..., mla_order("mla")]
    if name == "opt":  # OPT folds its logit scale (16 ** -0.5, a power of 2: exact) into q
        q = q / 0.25
    # a fused projection is one matmul there and three here, a q/k norm sums a partial RoPE's reordered features in
    # another order: equal up to the matmul's blocking, or the sum's order
    close = layout in ("phi3", "neox", "nanochat", "bigcode") or (rope_dim and hasattr(layer, "q_norm"))
    same = lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-6) if close else torch.equal(a, b)  # noqa: E731
    assert same(qk[:, :, :4], q) and same(qk[:, :, 4:], k)
    with torch.no_grad():
        if mla:  # kv_b_proj's per-head [k_nope 8 | v 12] from the normed latent
            latent = layer.kv_a_proj_with_mqa(inputs[0])[..., :16]
            assert same(layer.kv_b_proj(layer.kv_a_layernorm(latent)).view(2, 9, 4, 20)[..., 8:], v)
        else:
            assert same(layer.v_proj(inputs[0]).view_as(v), v)


@pytest.mark.parametrize("name", CASES)
def test_a_left_padded_hybrid_decodes_alike_on_the_static_and_the_default_cache(name):
    # cache_implementation="static" (2026-12-05): the converted layer 0 stands in for its static layer beside the kept
    # layer 1's static keys, whatever the architecture's masks (sliding windows, no-RoPE layers, partial RoPE)
    model = CASES[name][0]()
    convert_model(model, ConversionConfig(variant="rdn", keep_softmax=[1]))
    ids = torch.randint(3, 128, (2, 6))
    mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    settings = dict(attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0,
                    output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        default, static = (model.generate(ids, **settings, cache_implementation=c) for c in ("dynamic", "static"))
    assert torch.equal(static.sequences, default.sequences)
    for a, b in zip(static.scores, default.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_an_export_of_a_checkpoint_on_disk_reloads_every_weight(name, tmp_path):
    # A model transformers loads from disk remembers its load-time renamings (Mixtral's per-expert weights fused,
    # GPT-NeoX's head renamed) and writes them back reverted; the converted class, another model type, does not rename
    # them again: until 2026-12-05 ~20 of these architectures' exports reloaded those weights freshly initialised.
    from rla_convert.models.export import save_converted

    original = CASES[name][0]()
    original.save_pretrained(tmp_path / "source")
    model = type(original).from_pretrained(tmp_path / "source", dtype=torch.float32)
    convert_model(model, ConversionConfig(variant="rdn", keep_softmax=[1]))
    save_converted(model, None, tmp_path / "export")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    mine, back = model.state_dict(), reloaded.state_dict()
    assert set(back) == set(mine)
    for key, tensor in mine.items():
        assert torch.equal(back[key], tensor), key


def test_a_dropped_sliding_window_changes_nothing():
    model = CASES["mixtral"][0]()
    convert_model(model, ConversionConfig(variant="rdn"))
    ids = torch.randint(3, 128, (2, 12))
    with torch.no_grad():
        windowed = model(ids, use_cache=False).logits
        model.config.sliding_window = None
        assert torch.equal(model(ids, use_cache=False).logits, windowed)


REFUSED = {
    "cohere-qk-norm": (build("CohereConfig", "CohereForCausalLM", use_qk_norm=True),
                       r"CohereAttention\): its q/k LayerNorms \(use_qk_norm"),
    "gpt-oss": (build("GptOssConfig", "GptOssForCausalLM", num_local_experts=4, num_experts_per_tok=2, head_dim=16),
                r"GptOssAttention\): its attention sinks"),
    "gpt-j": (lambda: tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)),
              r"GPTJAttention\): GPT-J computes its interleaved RoPE inside the module"),
    "olmo-clip-qkv": (build("OlmoConfig", "OlmoForCausalLM", clip_qkv=2.0),
                      r"OlmoAttention\): its config clamps q/k/v \(clip_qkv\)"),
    "phi-qk-layernorm": (build("PhiConfig", "PhiForCausalLM", num_key_value_heads=4, qk_layernorm=True),
                         r"PhiAttention\): its q/k LayerNorms \(qk_layernorm"),
    "stablelm-qk-layernorm": (build("StableLmConfig", "StableLmForCausalLM", qk_layernorm=True),
                              r"StableLmAttention\): its q/k LayerNorms \(qk_layernorm"),
    "deepseek-v2": (build("DeepseekV2Config", "DeepseekV2ForCausalLM", **MLA, **DEEPSEEK_MOE, q_lora_rank=24),
                    r"DeepseekV2Attention\): its RoPE multiplies complex numbers"),
    "mistral4": (build("Mistral4Config", "Mistral4ForCausalLM", **MLA, **DEEPSEEK_MOE, q_lora_rank=24),
                 r"Mistral4Attention\): it scales q by a factor growing with the position"),
    "gemma3-bidirectional": (build("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16,
                                   use_bidirectional_attention=True), r"Gemma3Attention\): it attends bidirectionally"),
    # Llama's layout with a norm on the attention's output before o_proj: not mapped, so refused by name (the
    # catch-all SDPA adapter would have taken it and dropped the norm)
    "bitnet": (build("BitNetConfig", "BitNetForCausalLM"),
               r"does not know: BitNetAttention \(at model\.layers\.0\.self_attn and \d+ more layers?\)"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_architecture_without_an_exact_mapping_is_refused_with_the_reason(name):
    builder, reason = REFUSED[name]
    model = builder()
    with pytest.raises(UserError, match=reason) as err:
        convert_model(model, ConversionConfig(variant="rdn"))
    assert "\n" not in str(err.value)
    assert not any(isinstance(m, ResidualAttention) for m in model.modules())


def test_a_refused_layer_leaves_every_layer_as_it_was():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    model.model.layers[1].self_attn.is_causal = False  # layer 0 alone would convert
    with pytest.raises(UserError, match=r"cannot convert model\.layers\.1\.self_attn \(LlamaAttention\): it attends"):
        convert_model(model, ConversionConfig(variant="rdn"))
    assert [type(block.self_attn).__name__ for block in model.model.layers] == ["LlamaAttention", "LlamaAttention"]


def test_a_partial_rope_in_the_config_of_a_whole_head_architecture_is_refused():
    # the whole-head adapters read the attention module's forward, not the model's RoPE function: a config that
    # rotates part of each head (set here after the rotary embedding was built, so the forward still runs) is refused
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    model.config.rope_parameters["partial_rotary_factor"] = 0.5
    with pytest.raises(UserError, match=r"\(LlamaAttention\): its config rotates 8 of 16 head features"):
        convert_model(model, ConversionConfig(variant="rdn"))


def test_nanochat_with_a_rope_that_scales_cos_and_sin_is_refused():
    # its norm after RoPE removes YaRN's cos/sin scale; the converted layer's norm, before RoPE, would keep it
    model = tf.NanoChatForCausalLM(tf.NanoChatConfig(**SMALL, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64))).eval()
    with pytest.raises(UserError, match=r"\(NanoChatAttention\): its yarn RoPE scales cos/sin"):
        convert_model(model, ConversionConfig(variant="rdn"))


@pytest.mark.parametrize("name, expected", [
    ("phi3", "converts (phi3)"), ("olmo-clip-qkv", "refused: its config clamps q/k/v (clip_qkv)"),
    ("gpt-j", "refused: GPT-J computes its interleaved RoPE inside the module"), ("bitnet", "not known"),
])
def test_info_says_per_layer_whether_it_converts_without_tracing(name, expected):
    from rla_convert.inspect import describe_layers

    model = (CASES.get(name) or REFUSED[name])[0]()
    verdicts = {layer.conversion for layer in describe_layers(model)}
    assert len(verdicts) == 1 and verdicts.pop().startswith(expected)
    if name == "phi3":
        convert_model(model, ConversionConfig(variant="rdn"))
        assert {layer.conversion for layer in describe_layers(model)} == {"converted"}


def test_info_names_an_mla_models_query_and_key_head_size():
    # transformers sets an MLA config's head_dim to its RoPE part (qk_rope_head_dim); a q/k head holds nope + rope
    from rla_convert.inspect import architecture_summary

    model = CASES["deepseek-v3"][0]()
    cfg = model.config
    assert architecture_summary(model)["head_dim"] == cfg.qk_nope_head_dim + cfg.qk_rope_head_dim != cfg.head_dim

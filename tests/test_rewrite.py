"""The graph rewriter: every known architecture converts, unknown attention is named, options apply."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers as tf

from rla_convert.config import ConversionConfig, parse_keep_softmax
from rla_convert.convert import convert_model
from rla_convert.errors import UserError
from rla_convert.layers import ResidualAttention
from rla_convert.rewrite import rewrite_model

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def tiny(name):
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    if name == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, head_dim=16))
    config_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                             "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[name]
    return model_cls(config_cls(**SMALL))


class PlainAttention(nn.Module):
    """Not a transformers model: SDPA(is_causal=True) on projections of the hidden state, GQA by repeat."""

    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, kv_heads * self.hd)
        self.v_proj = nn.Linear(dim, kv_heads * self.hd)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(2, dim=1)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(2, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, -1)), None


class FusedAttention(PlainAttention):
    """Attention the registry does not know (one fused qkv projection)."""

    def __init__(self, dim=32, heads=4):
        nn.Module.__init__(self)
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.heads, self.hd).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)), None


class NormedAttention(PlainAttention):
    """PlainAttention with an RMSNorm on q: not SDPA straight on the projections, so no plain module."""

    def __init__(self):
        super().__init__()
        self.q_norm = nn.RMSNorm(8)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.heads, self.hd)).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(2, dim=1)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2).repeat_interleave(2, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, -1)), None


class TinyLM(nn.Module):
    def __init__(self, attention=PlainAttention, layers=2, dim=32, vocab=64, mix=True):
        super().__init__()
        self.vocab_size = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({"attn": attention() if mix else nn.Identity(), "mlp": nn.Linear(dim, dim)})
                                    for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.layers:
            if isinstance(block["attn"], nn.Identity):
                x = x + block["mlp"](x)
            else:
                x = x + block["attn"](x)[0]
                x = x + block["mlp"](x)
        return self.head(x)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "gpt2"])
def test_every_known_softmax_architecture_converts(name):
    model = tiny(name).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = convert_model(model, ConversionConfig(variant="rdn"))
    layers = [m for m in model.modules() if isinstance(m, ResidualAttention)]
    assert len(layers) == 2 and len(result.report.replaced) == 2
    assert result.drift is not None and result.drift.relative_error == result.drift.relative_error  # not NaN
    if name != "gpt2":  # q/k/v/o weights are reused as they were
        assert torch.equal(layers[0].q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])
        assert torch.equal(layers[1].o_proj.weight, before["model.layers.1.self_attn.o_proj.weight"])
    else:  # fused c_attn (Conv1D, [in, out]) split into q/k/v
        assert torch.equal(layers[0].k_proj.weight, before["transformer.h.0.attn.c_attn.weight"][:, 64:128].t())
    if name == "qwen3":
        assert torch.equal(layers[0].k_norm.weight, before["model.layers.0.self_attn.k_norm.weight"])
    out = model(torch.randint(0, 128, (2, 9))).logits
    assert torch.isfinite(out).all()


def test_plain_pytorch_model_with_sdpa_converts():
    model = TinyLM().eval()
    ids = torch.randint(0, 64, (2, 10))
    result = convert_model(model, ConversionConfig(variant="rla"))
    assert [r.action for r in result.report.rows] == ["rla", "rla"]
    layer = model.layers[0]["attn"]
    assert isinstance(layer, ResidualAttention) and (layer.num_q_heads, layer.num_k_heads, layer.head_dim) == (4, 2, 8)
    assert torch.isfinite(model(ids)).all()


class LaunchedNorm(nn.Module):
    """Reads its input's data pointer, as a raw Triton launch does (fla's fused RMSNorm): torch.export's
    fake tensors have none, so export fails on this model and capture must fall back to a real-tensor trace."""

    def forward(self, x):
        assert x.data_ptr() != 0
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class LaunchingLM(TinyLM):
    def __init__(self):
        super().__init__()
        self.norm = LaunchedNorm()

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.layers:
            x = x + block["attn"](self.norm(x))[0]
            x = x + block["mlp"](self.norm(x))
        return self.head(x)


def test_model_export_cannot_trace_is_captured_from_a_real_run():
    from rla_convert.rewrite.capture import capture_sites

    model = LaunchingLM().eval()
    ids = torch.randint(0, 64, (1, 12))
    with pytest.raises(Exception, match="data pointer"):
        torch.export.export(model, (ids,), strict=False)
    sites = capture_sites(model, ids, {})
    assert [(s.path, s.class_name, s.op, s.q_shape, s.is_causal) for s in sites] == [
        (f"layers.{i}.attn", "PlainAttention", "sdpa", (1, 4, 12, 8), True) for i in range(2)]
    reference = model(ids)
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.action for r in result.report.rows] == ["rdn", "rdn"]
    assert isinstance(model.layers[1]["attn"], ResidualAttention)
    assert model(ids).shape == reference.shape


class BrokenLM(LaunchingLM):
    def forward(self, ids):
        raise RuntimeError("this kernel needs a GPU")


def test_model_nothing_can_trace_gets_one_line_naming_both_attempts():
    with pytest.raises(UserError, match=r"could not capture.*torch\.export: RuntimeError: this kernel needs a GPU; "
                                        r"real-tensor trace: RuntimeError: this kernel needs a GPU\)$"):
        rewrite_model(BrokenLM(), ConversionConfig())


def test_a_model_whose_own_forward_fails_is_told_so_not_that_its_trace_failed():
    """convert_model runs the original first: where that fails and the trace then fails too, the line names the
    original's error (the cause), not torch.export's words about tracing."""
    with pytest.raises(UserError, match=r"^the original model's own forward fails here \(RuntimeError: this kernel "
                                        r"needs a GPU\), and the conversion traces it"):
        convert_model(BrokenLM(), ConversionConfig())


def test_unknown_attention_is_reported_by_name():
    with pytest.raises(UserError, match=r"does not know: FusedAttention \(at layers\.0\.attn and 1 more layer\); "
                                        r"supported: Llama") as refused:
        convert_model(TinyLM(attention=FusedAttention), ConversionConfig())
    # the supported list names architectures, not every class and caveat (the README's table has those): a nested
    # parenthesis in a description had once kept each of them whole, ~5,000 characters
    assert len(str(refused.value)) < 1500 and "LlamaAttention" not in str(refused.value)


def test_plain_module_with_more_than_its_projections_is_reported_by_name():
    # the plain adapter would drop its q norm: a module that is more than the four Linears is not plain
    with pytest.raises(UserError, match=r"does not know: NormedAttention \(at layers\.0\.attn and 1 more layer\)"):
        convert_model(TinyLM(attention=NormedAttention), ConversionConfig())


def test_eager_attention_is_found_by_its_softmax():
    from rla_convert.rewrite.capture import capture_sites

    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, attn_implementation="eager")).eval()
    sites = capture_sites(model, torch.randint(0, 128, (1, 8)), {})
    assert [(s.path, s.op) for s in sites] == [(f"model.layers.{i}.self_attn", "softmax") for i in range(2)]
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [(r.action, r.adapter) for r in result.report.rows] == [("rdn", "llama-family")] * 2


class PoolingAttention(nn.Module):
    """Not token mixing: a softmax-weighted pool of the sequence, under a class name that says Attention."""

    def __init__(self, dim=32):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x):
        return (torch.softmax(self.score(x), dim=1) * x).sum(1, keepdim=True)


def test_a_softmax_beside_sdpa_attention_is_not_a_site():
    # an SDPA model with an attention-pooling head: the pooling is no attention to convert
    model = TinyLM()
    model.pool = PoolingAttention()
    forward = model.forward
    model.forward = lambda ids: forward(ids) + model.head(model.pool(model.embed(ids)))
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.path for r in result.report.rows] == ["layers.0.attn", "layers.1.attn"]


def test_model_without_attention_lists_what_is_supported():
    with pytest.raises(UserError, match="rewriter recognises in TinyLM; supported:.*GPT-2.*Qwen3-Next"):
        convert_model(TinyLM(mix=False), ConversionConfig())


def test_an_attention_class_the_trace_does_not_show_is_named():
    """A module called *Attention whose forward mixes no tokens the way the rewriter takes (RWKV's, CPM-Ant's):
    the refusal names it, so the user knows it was seen and why it was not taken."""
    model = TinyLM(mix=False)
    model.pool = PoolingAttention()  # in the tree, not in the forward: nothing the trace shows
    with pytest.raises(UserError, match=r"recognises in TinyLM \(it has PoolingAttention \(at pool\), whose traced "
                                        r"forward calls no SDPA"):
        convert_model(model, ConversionConfig())


def test_keep_softmax_and_its_parsing():
    assert parse_keep_softmax("0,15", 30) == [0, 15]
    assert parse_keep_softmax("2", 30) == [0, 15]
    assert parse_keep_softmax("3,", 30) == [3]
    every = ",".join(map(str, range(30)))
    for bad, needle in (("30,", "out of range"), ("x", "like 0,15"), ("31", "between 0 and"), ("0,,3", "an empty item"),
                        ("4,4", "layer 4 is named twice"), ("30", "keeps all 30 layers"),
                        (every, "nothing would be converted")):
        with pytest.raises(UserError, match=needle):
            parse_keep_softmax(bad, 30)
    assert parse_keep_softmax("0,99", None) == [0, 99]  # the syntax alone, before the model (and its size) is loaded
    with pytest.raises(UserError, match="like 0,15"):
        parse_keep_softmax("1;2", None)
    model = tiny("llama").eval()
    result = convert_model(model, ConversionConfig(keep_softmax=[1]))
    assert [r.action for r in result.report.rows] == ["rdn", "kept"]
    assert type(model.model.layers[1].self_attn).__name__ == "LlamaAttention"
    with pytest.raises(UserError, match="out of range"):
        convert_model(tiny("llama"), ConversionConfig(keep_softmax=[5]))


def test_options_reach_the_layer():
    model = tiny("llama").eval()
    convert_model(model, ConversionConfig(variant="rla", clip=None, residual="tanh", conv_size=4, keep_rope=False,
                                          output_gate=True, gate_init="long-memory"))
    layer = model.model.layers[0].self_attn
    assert (layer.variant, layer.clip, layer.conv_size, layer.rope) == ("rla", None, 4, False)
    assert hasattr(layer, "g_proj") and hasattr(layer, "o_norm")
    assert torch.equal(layer.q_conv1d.weight[..., :-1], torch.zeros_like(layer.q_conv1d.weight[..., :-1]))  # identity start
    with pytest.raises(UserError, match="variant"):
        ConversionConfig(variant="gla")
    with pytest.raises(UserError, match="gate-init"):
        ConversionConfig(gate_init="zeros")


def tiny_qwen3_next():
    config = tf.Qwen3NextConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, intermediate_size=64,
        max_position_embeddings=128)
    return tf.Qwen3NextForCausalLM(config).eval()


def test_qwen3_next_gdn_becomes_rdn_reusing_every_weight():
    model = tiny_qwen3_next()
    gdn = model.model.layers[0].linear_attn
    x = torch.randn(1, 5, 64)
    q, k, v, z, b, a = gdn.fix_query_key_value_ordering(gdn.in_proj_qkvz(x), gdn.in_proj_ba(x))
    conv, A_log = gdn.conv1d.weight.detach().clone(), gdn.A_log.detach().clone()
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.action for r in result.report.rows] == ["rdn", "kept"]  # the hybrid keeps its softmax layer
    layer = model.model.layers[0].linear_attn
    assert isinstance(layer, ResidualAttention) and layer.call_style == "tensor"
    for mine, theirs in ((layer.q_proj(x).view(1, 5, 2, 16), q), (layer.k_proj(x).view(1, 5, 2, 16), k),
                         (layer.v_proj(x).view(1, 5, 4, 16), v), (layer.g_proj(x).view(1, 5, 4, 16), z),
                         (layer.b_proj(x), b), (layer.a_proj(x), a)):
        assert torch.equal(mine, theirs)
    assert torch.equal(torch.cat([layer.q_conv1d.weight, layer.k_conv1d.weight, layer.v_conv1d.weight]), conv)
    assert torch.equal(layer.A_log, A_log)
    # the new gate is the only addition, and starts the R branch small (small-residual strategy)
    added = result.report.rows[0].params_after - result.report.rows[0].params_before
    assert added == layer.gamma_proj.weight.numel() + layer.gamma_proj.bias.numel()
    assert result.report.gate_init == "small-residual"
    assert torch.sigmoid(layer.gamma_proj(x)).max() < 0.02


def tiny_qwen3_5(moe: bool):
    sizes = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                 linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                 linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=64, max_position_embeddings=128)
    if moe:
        sizes.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
        return tf.Qwen3_5MoeForCausalLM(tf.Qwen3_5MoeTextConfig(**sizes)).eval()
    return tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(**sizes)).eval()


def assert_the_gdn_baseline_is_the_original(model):
    """Converted to the gdn baseline (the gated delta rule itself, not RDN's), a Gated DeltaNet hybrid computes what
    it did: every weight of its linear layer mapped; its softmax layer kept."""
    ids = torch.randint(3, 128, (2, 9))
    with torch.no_grad():
        original = model(ids).logits
        result = convert_model(model, ConversionConfig(variant="gdn"))
        assert [r.action for r in result.report.rows] == ["gdn", "kept"]
        assert model.model.layers[0].linear_attn.call_style == "tensor"
        torch.testing.assert_close(model(ids).logits, original, rtol=0, atol=1e-5)


@pytest.mark.parametrize("moe", [False, True], ids=["qwen3.5", "qwen3.5-moe"])
def test_qwen3_5_gated_deltanet_maps_exactly(moe):
    # Qwen3.5's layer is Qwen3-Next's with plain projections; rdn keeps the softmax layers of the hybrid too
    assert_the_gdn_baseline_is_the_original(tiny_qwen3_5(moe))
    rdn = tiny_qwen3_5(moe)
    result = convert_model(rdn, ConversionConfig(variant="rdn"))
    assert [r.action for r in result.report.rows] == ["rdn", "kept"] and result.report.source_kind == "gated-deltanet"


def test_olmo_hybrid_gated_deltanet_maps_exactly_and_a_negative_eigenvalue_config_is_refused():
    def tiny(neg_eigval):
        return tf.OlmoHybridForCausalLM(tf.OlmoHybridConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
            linear_conv_kernel_dim=4, linear_allow_neg_eigval=neg_eigval, pad_token_id=0)).eval()

    assert_the_gdn_baseline_is_the_original(tiny(False))
    refused = tiny(True)
    with pytest.raises(UserError, match=r"\(OlmoHybridGatedDeltaNet\): its config's linear_allow_neg_eigval=True"):
        convert_model(refused, ConversionConfig(variant="rdn"))
    assert type(refused.model.layers[0].linear_attn).__name__ == "OlmoHybridGatedDeltaNet"  # left as it was


class FlaHost(nn.Module):
    """fla's GatedDeltaNet layer inside plain torch blocks (fla's own model needs Triton for its norms)."""

    def __init__(self):
        super().__init__()
        from fla.layers import GatedDeltaNet

        self.vocab_size = 64
        self.embed = nn.Embedding(64, 32)
        self.layers = nn.ModuleList(GatedDeltaNet(hidden_size=32, head_dim=8, num_heads=2, expand_v=2, layer_idx=i)
                                    for i in range(2))
        self.head = nn.Linear(32, 64)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer(hidden_states=x)[0]
        return self.head(x)


def test_fla_gated_deltanet_layer_becomes_rdn_reusing_every_weight():
    model = FlaHost().eval()
    names = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "a_proj.weight", "b_proj.weight", "A_log", "dt_bias",
             "g_proj.weight", "o_norm.weight", "o_proj.weight", "q_conv1d.weight", "v_conv1d.weight")
    before = {n: model.layers[1].state_dict()[n].clone() for n in names}
    result = convert_model(model, ConversionConfig(variant="rdn"))
    layer = model.layers[1]
    assert isinstance(layer, ResidualAttention) and layer.call_style == "triple"
    assert [r.action for r in result.report.rows] == ["rdn", "rdn"]
    for n in names:
        assert torch.equal(layer.state_dict()[n], before[n]), n
    assert torch.isfinite(model(torch.randint(0, 64, (1, 7)))).all()


def test_a_conversion_that_fails_after_the_swap_leaves_the_model_as_it_was(monkeypatch):
    """The conversion's own forward after the swap raising (a kernel error, say): the model keeps its class, its
    config, its attention modules and its outputs, rather than a half-converted model."""
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model.eval()
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        logits = model(ids).logits
    config, attention = model.config, model.model.layers[1].self_attn

    def broken(*args, **kwargs):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(ResidualAttention, "forward", broken)
    attributes, conversion = set(vars(model)), ConversionConfig()
    with pytest.raises(RuntimeError, match="kernel launch failed"):
        convert_model(model, conversion)
    assert type(model) is tf.LlamaForCausalLM and model.config is config and set(vars(model)) == attributes
    assert conversion.layers == []
    assert model.model.layers[1].self_attn is attention and model.model.config is config
    assert not any(isinstance(m, ResidualAttention) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)

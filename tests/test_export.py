"""Export: both loading paths give bit-identical fp32 logits and generate; writing is atomic."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers as tf
from transformers import AutoModelForCausalLM

from clitools import WITHOUT_TOOLKIT

import rla_convert  # noqa: F401  (registers model_type "rla")
from rla_convert.compat import cache_argument, output_cache
from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.errors import UserError
from rla_convert.models import export as export_module
from rla_convert.models.export import save_converted

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

# Run in a fresh interpreter that cannot import the toolkit: only torch + transformers.
REMOTE = WITHOUT_TOOLKIT + textwrap.dedent("""
    import torch
    from transformers import AutoModelForCausalLM
    directory, ids_file, out_file = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    ids = torch.load(ids_file)
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    torch.save({"logits": logits, "generated": generated,
                "toolkit": [m for m in sys.modules if m.startswith(("rla_convert", "rla_kernels"))]}, out_file)
""")


def run_without_toolkit(out, ids, tmp_path, **env_extra) -> dict:
    """REMOTE on the export ``out`` in a fresh interpreter that cannot import the toolkit: its logits, generation
    and the toolkit modules it imported (none)."""
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), **env_extra}
    run = subprocess.run([sys.executable, "-c", REMOTE, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "r.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(tmp_path / "r.pt")


def convert_and_save(model, tmp_path, **options):
    model.eval()
    convert_model(model, ConversionConfig(**options))
    return model, save_converted(model, None, tmp_path / "out")


@pytest.mark.parametrize("options", [dict(variant="rdn"), dict(variant="rla", keep_softmax=[0], conv_size=3),
                                     dict(variant="gdn")])
def test_round_trip_is_bit_identical_both_ways(tmp_path, options):
    model, out = convert_and_save(tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)), tmp_path, **options)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        reference = model(ids).logits
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rla" and config["conversion"]["variant"] == options["variant"]
    assert config["base_config"]["model_type"] == "llama" and config["auto_map"]["AutoModelForCausalLM"]

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, reference)

    # debug mode on: the shipped kernel selector must accept (and skip) the value checks it does not have
    remote = run_without_toolkit(out, ids[:1], tmp_path, RLA_CONVERT_DEBUG="1")
    assert remote["toolkit"] == []
    with torch.no_grad():  # same batch shape as the subprocess: matmul blocking may depend on it
        assert torch.equal(remote["logits"], model(ids[:1]).logits)
    assert torch.equal(remote["generated"], reloaded.generate(ids[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False))


def tiny_qwen3_next():
    config = tf.Qwen3NextConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, intermediate_size=64,
        max_position_embeddings=128)
    return tf.Qwen3NextForCausalLM(config)


def tiny_qwen3_5():  # Qwen3.5's Gated DeltaNet (plain projections) beside a kept gated softmax layer
    return tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=64,
        max_position_embeddings=128))


def tiny_gpt_neox():  # fused per-head query_key_value, RoPE on the first 4 of 16 features, cache as layer_past
    return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**{**SMALL, "num_key_value_heads": 4}, attention_bias=True,
                                                  bos_token_id=1, eos_token_id=2))


@pytest.mark.parametrize("build", [
    lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    tiny_qwen3_next,
    tiny_qwen3_5,
    lambda: tf.MiniMaxForCausalLM(tf.MiniMaxConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                                                   layer_types=["linear_attention", "full_attention"])),
    tiny_gpt_neox,
    lambda: tf.NemotronHForCausalLM(tf.NemotronHConfig(  # its "mlp" layer type: a converted config once failed on it
        **{**SMALL, "num_hidden_layers": 3}, layers_block_type=["mamba", "attention", "mlp"], head_dim=16,
        mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=1, use_mamba_kernels=False)),
    lambda: tf.Lfm2ForCausalLM(tf.Lfm2Config(**SMALL, layer_types=["conv", "full_attention"])),
    lambda: tf.GraniteMoeHybridForCausalLM(tf.GraniteMoeHybridConfig(  # Granite 4: Mamba-2, attention without RoPE
        **SMALL, layer_types=["mamba", "attention"], num_local_experts=4, num_experts_per_tok=2, mamba_n_heads=4,
        mamba_d_head=32, mamba_d_state=16, mamba_n_groups=1)),
    lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=4, pad_token_id=0,
                                                     bos_token_id=1, eos_token_id=2)),
    lambda: tf.Cohere2ForCausalLM(tf.Cohere2Config(**SMALL, sliding_window=4, pad_token_id=0, bos_token_id=1,
                                                   eos_token_id=2)),
    lambda: tf.SmolLM3ForCausalLM(tf.SmolLM3Config(**SMALL, no_rope_layers=[1, 0], pad_token_id=0, bos_token_id=1,
                                                   eos_token_id=2)),
], ids=["gpt2", "qwen3-next", "qwen3.5", "minimax", "gpt-neox", "nemotron-h", "lfm2", "granite4", "olmo2", "gemma3",
        "cohere2", "smollm3"])
def test_other_architectures_round_trip_and_decode(tmp_path, build):
    model, out = convert_and_save(build(), tmp_path, variant="rdn")
    ids = torch.randint(1, 128, (1, 7))
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    # the converted model keeps the base's kernel choices (it had lost the MoE experts': eager loop vs grouped_mm)
    assert model.config._experts_implementation == reloaded.config._experts_implementation
    assert model.config._attn_implementation == reloaded.config._attn_implementation
    with torch.no_grad():
        # not bitwise: qwen3-next's grouped experts matmul rounds differently for equal weights at other
        # addresses (ulp-level; measured 2026-12-01 with every layer's input equal)
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)
    cached = reloaded.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    eos = reloaded.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    steps = ids
    with torch.no_grad():
        for _ in range(6):
            logits = reloaded(steps, use_cache=False).logits[:, -1:]
            logits[..., eos] = -torch.inf  # what min_new_tokens does in generate()
            steps = torch.cat([steps, logits.argmax(-1)], 1)
    assert torch.equal(cached, steps)
    static = reloaded.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(static, steps)


def test_partial_rope_export_runs_without_the_toolkit(tmp_path):
    model, out = convert_and_save(tiny_gpt_neox(), tmp_path, variant="rdn")
    assert json.loads((out / "config.json").read_text())["conversion"]["layers"][0]["kwargs"]["rope_dim"] == 4
    ids = torch.randint(3, 128, (1, 9))
    remote = run_without_toolkit(out, ids, tmp_path)
    assert remote["toolkit"] == []
    with torch.no_grad():
        assert torch.equal(remote["logits"], model(ids).logits)
    assert torch.equal(remote["generated"], model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    convert_model(model, ConversionConfig())

    def broken(directory):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_modeling_code", broken)
    with pytest.raises(OSError):
        save_converted(model, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    convert_model(model, ConversionConfig())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(UserError, match="--force"):
        save_converted(model, None, tmp_path / "out")
    save_converted(model, None, tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_export_directory_gets_the_mode_a_plain_mkdir_would(tmp_path):
    # mkdtemp's 0700 made exports unreadable to other users and service accounts
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    convert_model(model, ConversionConfig())
    old = os.umask(0o022)
    try:
        out = save_converted(model, None, tmp_path / "out")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("base", ["llama", "mistral_sliding_window"])
def test_flex_attention_loads_read_padding_from_the_block_mask(tmp_path, base, monkeypatch):
    """attn_implementation="flex_attention" hands the layers a BlockMask, not a tensor: its padding is read through
    its mask function (it raised AttributeError before), so a left-padded batch gives the SDPA load's logits and
    generation, prefill and decode both through the BlockMask."""
    from rla_convert.layers.residual_attention import ResidualAttention
    if base == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL))
    else:  # a window shorter than the batch: the diagonal, not the last row, says which tokens are real
        model = tf.MistralForCausalLM(tf.MistralConfig(**SMALL, sliding_window=4))
    _, out = convert_and_save(model, tmp_path, variant="rdn")
    ids = torch.randint(1, 128, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    seen = []
    real = ResidualAttention._block_mask_diagonal
    monkeypatch.setattr(ResidualAttention, "_block_mask_diagonal",
                        staticmethod(lambda m, B, T, first=None: seen.append(T) or real(m, B, T, first)))
    sdpa = AutoModelForCausalLM.from_pretrained(out).eval()
    flex = AutoModelForCausalLM.from_pretrained(out, attn_implementation="flex_attention").eval()
    with torch.no_grad():
        reference = sdpa(ids, attention_mask=mask).logits
        assert not seen
        assert torch.equal(flex(ids, attention_mask=mask).logits, reference)
        assert seen and set(seen) == {9}
        generated = sdpa.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(flex.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                                         do_sample=False), generated)
        # generate() reaches the layers through the converted model's forward, which hands them the 2-D mask; the
        # base model called directly leaves them the BlockMask, at decode too
        step, longer = torch.randint(1, 128, (2, 1)), torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoded = []
        for loaded in (sdpa, flex):
            prefill = loaded.model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
            decoded.append(loaded.model(step, attention_mask=longer, position_ids=positions[:, -1:] + 1,
                                        use_cache=True, **{cache_argument(loaded): output_cache(prefill)}))
        assert 1 in seen
        assert torch.allclose(decoded[1].last_hidden_state, decoded[0].last_hidden_state, atol=1e-5)
        unpadded = sdpa(ids, attention_mask=torch.ones_like(mask)).logits
    # without the padding read, row 0's real tokens would see its three pad tokens
    assert not torch.allclose(unpadded[0, 3:], reference[0, 3:], atol=1e-3)


def test_a_block_mask_of_another_length_is_refused_in_one_line():
    from torch.nn.attention.flex_attention import create_block_mask

    from rla_convert.layers.residual_attention import ResidualAttention
    block_mask = create_block_mask(lambda b, h, q, kv: kv <= q, B=2, H=None, Q_LEN=12, KV_LEN=12, device="cpu")
    with pytest.raises(ValueError, match=r"query length is this call's 9 tokens .*attn_implementation='sdpa'"):
        ResidualAttention._valid_tokens(block_mask, 2, 9)


def reload_alike(model, out, ids, class_name):
    """The export ``out`` of ``model`` loaded back: its class is ``class_name`` and it gives ``model``'s logits and
    greedy generation on ``ids``; returns (the reloaded model, those logits, that generation)."""
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == class_name
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)
        assert torch.equal(reloaded.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False), generated)
    return reloaded, logits, generated


def test_a_composite_model_converts_generates_and_reloads(tmp_path):
    """Gemma 3's multimodal class (what AutoModelForCausalLM builds for model_type "gemma3", 4B and up) nests its
    text and vision configs: the converted config keeps them as config objects (copied flat they were dicts, and
    the conversion's own forward died on text_config.get_text_config()). Only the language model's layers convert;
    the reloaded model, with and without the toolkit, gives the same logits and generation."""
    text = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    model = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(text_config=text, vision_config=vision,
                                                               mm_tokens_per_image=4))
    model.eval()
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert result.drift is not None, result.drift_note  # its example ids drawn from the text config's vocabulary
    out = save_converted(model, None, tmp_path / "out")
    assert [layer["path"] for layer in model.config.conversion["layers"]] == [
        "model.language_model.layers.0.self_attn", "model.language_model.layers.1.self_attn"]
    assert isinstance(model.config.text_config, tf.Gemma3TextConfig) and set(model.config.sub_configs) == {
        "text_config", "vision_config"}
    assert model.config.text_config is model.model.language_model.config  # the live sub-model's, not a copy
    ids = torch.randint(3, 120, (1, 9))
    reloaded, logits, generated = reload_alike(model, out, ids, "RLAGemma3ForConditionalGeneration")
    assert isinstance(reloaded.config.text_config, tf.Gemma3TextConfig)
    assert reloaded.config.text_config._attn_implementation == model.config.text_config._attn_implementation

    remote = run_without_toolkit(out, ids, tmp_path)
    assert remote["toolkit"] == [] and torch.equal(remote["logits"], logits)
    assert torch.equal(remote["generated"], generated)

    # a sub-config changed after the conversion is what the reload builds from (base_config kept up to date)
    model.resize_token_embeddings(136)
    resized = save_converted(model, None, tmp_path / "resized")
    reloaded = AutoModelForCausalLM.from_pretrained(resized).eval()
    assert reloaded.config.text_config.vocab_size == 136 == reloaded.config.base_config["text_config"]["vocab_size"]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_qwen3_5s_multimodal_class_converts_its_language_model_and_reloads(tmp_path):
    # what Qwen3.5 checkpoints load as: the vision tower's attention stays, the language model's Gated DeltaNet
    # layers convert (its gated softmax layer is kept: a hybrid), the reload gives the same logits and generation
    text = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=64, max_position_embeddings=128)
    vision = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64)
    model = tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(text_config=text, vision_config=vision)).eval()
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.action for r in result.report.rows] == ["rdn", "kept"]
    paths = [layer["path"] for layer in model.config.conversion["layers"]]
    assert paths == ["model.language_model.layers.0.linear_attn"]
    out = save_converted(model, None, tmp_path / "out")
    reload_alike(model, out, torch.randint(3, 120, (1, 9)), "RLAQwen3_5ForConditionalGeneration")


def test_a_converted_config_is_validated_by_its_base_config_class():
    # PreTrainedConfig's generic rules reject Nemotron-H's "mlp" layer type, which NemotronHConfig allows: the converted
    # config defers to the base class there, and the base class still rejects what it rejects
    from rla_convert.models.configuration_rla import RLAConfig

    base = tf.NemotronHConfig(num_hidden_layers=3, layers_block_type=["mamba", "attention", "mlp"], hidden_size=64,
                              num_attention_heads=4, head_dim=16, vocab_size=128)
    nemotron = RLAConfig.from_base(base, {}, tf.NemotronHForCausalLM)
    nemotron.validate()
    llama = RLAConfig.from_base(tf.LlamaConfig(**SMALL), {}, tf.LlamaForCausalLM)
    llama.layer_types = ["bogus", "full_attention"]
    with pytest.raises(Exception, match="layer_types"):
        llama.validate()

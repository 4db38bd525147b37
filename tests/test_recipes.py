"""Every recipe in recipes/ loads, and runs a few steps on a tiny random model of its architecture.

The recipes name checkpoints that cannot be fetched here (or take minutes on CPU); each runs with its
own conversion, LoRA, optimiser and loss settings, on a tiny model and tiny data, two steps per stage.
"""
from pathlib import Path

import pytest
import torch
import transformers as tf

from rla_convert.distill.recipe import load_recipe
from rla_convert.distill.trainer import DistillRun

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _llama(vocab):
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                              tie_word_embeddings=True))  # SmolLM2 ties its embeddings


def _qwen3(vocab):
    return tf.Qwen3ForCausalLM(tf.Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                              max_position_embeddings=128))


def _gated_deltanet(vocab):
    # fla's GDN model needs a GPU (its norms are Triton kernels): on CPU transformers' Qwen3-Next GDN layer
    # stands in, the other Gated DeltaNet the rewriter maps with every weight reused.
    return tf.Qwen3NextForCausalLM(tf.Qwen3NextConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, intermediate_size=64,
        max_position_embeddings=128))


FAMILIES = {"smollm2-135m": _llama, "Qwen/Qwen3-0.6B": _qwen3, "fla-hub/gdn-1.3B-100B": _gated_deltanet}


def test_every_recipe_is_known_here():
    names = {p.name for p in RECIPES}
    assert {"cpu-smoke.yaml", "smollm2-135m-rdn.yaml", "smollm2-135m-rla.yaml", "smollm2-135m-rdn-hybrid.yaml",
            "qwen3-0.6b-rdn.yaml", "gdn-to-rdn.yaml"} <= names
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.model in FAMILIES, f"{path.name}: add a tiny stand-in for {recipe.model} to this test"
        assert recipe.expects, f"{path.name} must say what it expects to reach"


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name != "cpu-smoke.yaml"], ids=lambda p: p.stem)
def test_recipe_runs_on_a_tiny_model_of_its_architecture(path, tmp_path, word_tokenizer, word_corpus):
    model_dir = tmp_path / "model"
    FAMILIES[load_recipe(path).model](len(word_tokenizer)).save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    overrides = [f"model={model_dir}", f"data.train={word_corpus}", "data.seq_len=32", "data.heldout_fraction=0.1",
                 f"data.cache_dir={tmp_path / 'cache'}", "stage1.steps=2", "stage1.batch_size=2", "stage1.warmup_steps=1",
                 "stage2.steps=2", "stage2.batch_size=2", "stage2.warmup_steps=1", "eval.every=0", "eval.tokens=256",
                 "eval.passkey=[]", "precision=fp32", "device=cpu", f"output={tmp_path / 'run'}"]
    if load_recipe(path).conversion.keep_softmax:  # a hybrid recipe names layers of the real model: keep one of the two here
        overrides.append("conversion.keep_softmax=[1]")
    recipe = load_recipe(path, overrides)
    summary = DistillRun(recipe, progress=False).run()
    assert (tmp_path / "run" / "final" / "trainable.safetensors").is_file()
    assert all(torch.isfinite(torch.tensor(summary[k])) for k in ("ppl_ratio_before", "ppl_ratio_stage1", "ppl_ratio_stage2"))

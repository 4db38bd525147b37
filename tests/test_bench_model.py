"""The model benchmark's measuring pieces, on a tiny random Llama (CPU)."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rla_convert.bench.model import decode_point, prefill_point, run_model_bench


def _tiny():
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


def test_kv_cache_bytes_are_counted_exactly():
    model, cpu = _tiny(), torch.device("cpu")
    p = decode_point("t", model, context=100, batch=3, device=cpu, steps=4)
    assert p.error is None and p.ms > 0
    # layers x (k, v) x batch x kv_heads x context x head_dim x 4 bytes
    assert p.cache_mb * 2**20 == 2 * 2 * 3 * 2 * 100 * 8 * 4
    assert p.extra["cache_mb_after_decode"] * 2**20 == 2 * 2 * 3 * 2 * 104 * 8 * 4


def test_a_failing_point_is_recorded_and_the_run_goes_on():
    model = _tiny()

    class Broken(torch.nn.Module):
        config = model.config

        def forward(self, **kwargs):
            raise RuntimeError("CUDA out of memory (simulated)\nmore detail")

    points = run_model_bench({"ok": model, "broken": Broken()}, torch.device("cpu"), prefill_contexts=[32],
                             decode_contexts=[16], decode_batch=1, throughput_batches=[2], throughput_context=16,
                             progress=False)
    assert [p.measure for p in points] == ["prefill", "decode", "throughput"] * 2
    assert all(p.error is None for p in points[:3])
    assert all(p.error.startswith("RuntimeError: CUDA out of memory") for p in points[3:])


def test_prefill_reports_tokens_per_second():
    p = prefill_point("t", _tiny(), context=64, batch=1, device=torch.device("cpu"), repeats=2)
    assert p.error is None and abs(p.tokens_per_s - 64 / p.ms * 1e3) < 1e-6


@pytest.mark.parametrize("convert", [False, True, "hybrid"],
                         ids=["teacher-static-cache", "converted-states-in-place", "hybrid-static-cache"])
def test_greedy_step_decodes_what_generate_does(convert):
    # The step a CUDA graph captures: token and position advance in place on the device; run eagerly here,
    # its logits must be those of recomputing the whole prefix, for a softmax model (static KV cache, its
    # empty slots masked), a converted one, and a hybrid (its kept layer's static keys masked to the cache's length,
    # its converted layer's states in the static cache's place).
    from transformers import StaticCache

    from rla_convert.bench.graphed import GraphedGreedyStep, GreedyStep
    from rla_convert.compat import cache_argument
    from rla_convert.config import ConversionConfig
    from rla_convert.convert import convert_model

    model = _tiny()
    if convert:
        kept = [1] if convert == "hybrid" else []
        convert_model(model, ConversionConfig(variant="rdn", conv_size=4, keep_softmax=kept))
    ids = torch.randint(3, 97, (2, 11))
    expected = model.generate(ids, max_new_tokens=7, min_new_tokens=7, do_sample=False)
    step = GreedyStep(model, ids, max_new_tokens=7 + 20, cache_kwarg=cache_argument(model))  # spare empty slots
    assert isinstance(step.cache, StaticCache) == (convert is not True)
    assert len(step.recurrent) == {False: 0, True: 2, "hybrid": 1}[convert]
    tokens = [step.token.clone()]
    for i in range(6):
        logits = step()
        with torch.no_grad():
            recomputed = model(expected[:, :11 + i + 1], use_cache=False).logits[:, -1:]
        torch.testing.assert_close(logits, recomputed, rtol=1e-4, atol=1e-4)
        tokens.append(step.token.clone())
    assert torch.equal(torch.cat(tokens, 1), expected[:, 11:])
    assert int(step.position) == 11 + 6
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        GraphedGreedyStep(step)

"""Greedy generation (`rla_convert.generate`, `rla-convert generate`) on tiny random models."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from clitools import one_error_line, run_process
from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.errors import UserError
from rla_convert.generate import _cut_after_eos, greedy_generate


def _tiny_converted(vocab=97, keep_softmax=()):  # keep_softmax None: unconverted (the teacher)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # decisive logits: no argmax ties between the cached and the reference path
        model.lm_head.weight.mul_(50)
    if keep_softmax is None:
        return model
    return convert_model(model, ConversionConfig(variant="rdn", keep_softmax=list(keep_softmax))).model.eval()


def _transformers_greedy(model, ids, n):
    """transformers' greedy continuation with no eos (min_new_tokens would bend the argmax away from it)."""
    model.generation_config.eos_token_id = None
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=0)[:, ids.shape[1]:]


def test_greedy_generate_continues_as_transformers_generate_does():
    model = _tiny_converted()
    ids = torch.randint(3, 97, (2, 9))
    expected = _transformers_greedy(model, ids, 12)
    result = greedy_generate(model, ids, max_new_tokens=12)
    assert torch.equal(result.tokens, expected)
    assert not result.graphed and result.prefill_ms > 0 and result.ms_per_token > 0


def test_a_hybrid_that_keeps_softmax_layers_generates_what_transformers_does():
    model = _tiny_converted(keep_softmax=(1,))
    ids = torch.randint(3, 97, (2, 9))
    expected = _transformers_greedy(model, ids, 8)
    assert torch.equal(greedy_generate(model, ids, max_new_tokens=8).tokens, expected)


@pytest.mark.parametrize("convert", [True, False], ids=["converted", "teacher"])
def test_left_padded_prompts_continue_as_each_prompt_alone(convert):
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    if convert:
        model = convert_model(model, ConversionConfig(variant="rdn")).model.eval()
    short, long = torch.randint(3, 97, (1, 5)), torch.randint(3, 97, (1, 11))
    ids = torch.cat([torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    batch = greedy_generate(model, ids, max_new_tokens=10, attention_mask=mask).tokens
    assert torch.equal(batch[0], greedy_generate(model, short, max_new_tokens=10).tokens[0])
    assert torch.equal(batch[1], greedy_generate(model, long, max_new_tokens=10).tokens[0])
    with pytest.raises(UserError, match="pad on the left only"):
        greedy_generate(model, ids, max_new_tokens=2, attention_mask=mask.flip(1))


@pytest.mark.parametrize("step_class", ["eager", "graphable"])
def test_a_left_padded_row_gets_the_logits_of_its_prompt_alone(step_class):
    # Tokens alone would not show wrong positions in a tiny model; logits do (RoPE before SiLU is not relative).
    from rla_convert.bench.graphed import GreedyStep
    from rla_convert.compat import cache_argument
    from rla_convert.generate import _CachedStep

    model = _tiny_converted()
    make = (lambda ids, mask=None: _CachedStep(model, ids, cache_argument(model), mask)) if step_class == "eager" else \
        (lambda ids, mask=None: GreedyStep(model, ids, 8, cache_argument(model), attention_mask=mask))
    short, long = torch.randint(3, 97, (1, 5)), torch.randint(3, 97, (1, 11))
    ids = torch.cat([torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    with torch.no_grad():
        padded, alone = make(ids, mask), make(short)
        for _ in range(3):
            torch.testing.assert_close(padded()[0], alone()[0], rtol=1e-5, atol=1e-5)


def test_generation_stops_at_eos_and_pads_after_it():
    model = _tiny_converted()
    ids = torch.randint(3, 97, (1, 9))
    free = greedy_generate(model, ids, max_new_tokens=40).tokens
    eos = int(free[0, 5])
    first = int((free[0] == eos).nonzero()[0])  # the token may occur earlier too
    stopped = greedy_generate(model, ids, max_new_tokens=40, eos_token_id=eos)
    assert torch.equal(stopped.tokens[0], free[0, :first + 1])  # cut right after the first eos
    assert stopped.steps == 15  # and stopped at the first look after it (every 16 tokens), not after 40
    other = int(free[0, 2])
    end = int(torch.isin(free[0], torch.tensor([other, eos])).nonzero()[0])
    several = greedy_generate(model, ids, max_new_tokens=40, eos_token_id=[other, eos]).tokens  # either ends a row
    assert torch.equal(several[0], free[0, :end + 1])


def test_rows_finished_at_different_steps_are_padded_after_their_eos():
    tokens = torch.tensor([[5, 2, 7, 8], [5, 6, 7, 2]])
    assert _cut_after_eos(tokens, 2, 0).tolist() == [[5, 2, 0, 0], [5, 6, 7, 2]]
    assert _cut_after_eos(torch.tensor([[5, 2, 7], [2, 6, 7]]), 2, 0).tolist() == [[5, 2], [2, 0]]
    assert _cut_after_eos(torch.tensor([[5, 2, 7], [4, 6, 7]]), 2, None).tolist() == [[5, 2, 2], [4, 6, 7]]


def test_bad_requests_say_what_is_accepted():
    model = _tiny_converted()
    ids = torch.randint(3, 97, (1, 4))
    with pytest.raises(UserError, match="CUDA graphs need a CUDA device"):
        greedy_generate(model, ids, max_new_tokens=4, cuda_graph=True)
    with pytest.raises(UserError, match="max_new_tokens must be at least 1"):
        greedy_generate(model, ids, max_new_tokens=0)
    with pytest.raises(UserError, match="at least one token"):
        greedy_generate(model, ids[:, :0], max_new_tokens=3)
    with pytest.raises(UserError, match="needs more than 3 new tokens"):
        greedy_generate(model, ids, max_new_tokens=3, cuda_graph=True)
    one = greedy_generate(model, ids, max_new_tokens=1)
    assert one.tokens.shape == (1, 1) and one.steps == 0 and one.ms_per_token is None


@pytest.mark.parametrize("keep_softmax, refused", [([], False), ([1], False), ([0], True), (None, True)],
                         ids=["converted", "hybrid-keeps-full", "hybrid-keeps-sliding", "teacher"])
def test_softmax_layers_with_a_sliding_window_are_not_graphed(keep_softmax, refused):
    # transformers' sliding static cache layer writes where a host-side counter says: a captured graph would replay
    # it frozen (past the window: an index error). A model that keeps such a layer decodes eagerly; one whose
    # sliding layers are all converted, or that keeps only full-attention layers, is graphed.
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rla_convert.bench.graphed import GreedyStep
    from rla_convert.generate import _graph_refusal

    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, use_sliding_window=True, sliding_window=6,
                      layer_types=["sliding_attention", "full_attention"])
    model = Qwen2ForCausalLM(cfg).eval()
    if keep_softmax is not None:
        model = convert_model(model, ConversionConfig(variant="rdn", keep_softmax=keep_softmax)).model
    reason = _graph_refusal(model, torch.device("cuda"), padded=False)  # (a device object: no CUDA needed)
    if refused:
        assert reason == ("softmax layers with a sliding window (decoder layers 0) decode eagerly: their static "
                          "cache writes by a host-side counter that a CUDA graph would freeze")
        with pytest.raises(ValueError, match="sliding window"):
            GreedyStep(model, torch.randint(3, 97, (1, 4)), max_new_tokens=3)
    else:
        assert reason is None
        GreedyStep(model, torch.randint(3, 97, (1, 4)), max_new_tokens=3)()


@pytest.mark.gpu
@pytest.mark.parametrize("keep_softmax", [(), (1,), None], ids=["converted", "hybrid", "teacher"])
def test_graphed_generation_on_cuda_equals_eager(keep_softmax):
    # the teacher (a static KV cache, captured) too: bench model times it, and a hybrid keeps such a layer
    model = _tiny_converted(keep_softmax=keep_softmax).cuda()
    ids = torch.randint(3, 97, (3, 17), device="cuda")
    eager = greedy_generate(model, ids, max_new_tokens=24, cuda_graph=False)
    graphed = greedy_generate(model, ids, max_new_tokens=24, cuda_graph=True)
    assert graphed.graphed and not eager.graphed
    assert torch.equal(graphed.tokens, eager.tokens)


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, word_tokenizer):
    root = tmp_path_factory.mktemp("generate")
    cfg = LlamaConfig(vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(root / "teacher")
    word_tokenizer.save_pretrained(root / "teacher")
    r = run_process(str(root / "teacher"), "--variant", "rdn", "--out", str(root / "rdn"))
    assert r.returncode == 0, r.stderr
    return root / "rdn"


def test_generate_command_prints_the_continuation_and_its_speed(converted_dir):
    r = run_process("generate", str(converted_dir), "--prompt", "the grass is", "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    from conftest import WORDS

    words = r.stdout.split()
    assert words[:3] == ["the", "grass", "is"] and len(words) > 3
    assert all(w in WORDS for w in words)  # prompt and continuation spaced apart, no glued words
    assert "ms/token (eager)" in r.stderr and "prefill" in r.stderr


def test_generate_command_takes_prompts_of_different_lengths(converted_dir):
    alone = [run_process("generate", str(converted_dir), "--prompt", p, "--max-new-tokens", "5").stdout
             for p in ("the sky", "here we go there and back")]
    both = run_process("generate", str(converted_dir), "--prompt", "the sky", "--prompt", "here we go there and back",
                       "--max-new-tokens", "5")
    assert both.returncode == 0, both.stderr
    assert both.stdout == "".join(alone)


@pytest.mark.parametrize("args, needle", [
    (["--prompt", "the sky", "--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device"),
    (["--prompt", "the sky", "--max-new-tokens", "0"], "max-new-tokens"),
    ([], "--prompt"),
    (["--prompt", ""], "--prompt '' is empty"),
    (["--prompt", "the sky", "--device", "tpu"], "'tpu' is not a device"),
])
def test_generate_command_bad_input_is_one_line(converted_dir, args, needle):
    r = run_process("generate", str(converted_dir), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    if "rla-convert: error:" in r.stderr:
        one_error_line(r.stderr)

"""Cached decoding: greedy generation with the cache equals recomputing the prefix; states stay fixed-size."""
import inspect

import pytest
import torch
import transformers as tf

from rla_convert.compat import cache_argument, output_cache
from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.models.cache import RecurrentStateLayer

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def recompute_greedy(model, ids, steps):
    """Greedy decoding by recomputing the prefix each step, the end-of-text tokens held back as generate()'s
    min_new_tokens does (the tests ask for that many)."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, use_cache=False).logits[:, -1:]
            logits[..., eos] = -torch.inf
            ids = torch.cat([ids, logits.argmax(-1)], 1)
    return ids


def converted_llama(**options):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).eval()
    convert_model(model, ConversionConfig(**options))
    return model


@pytest.mark.parametrize("options", [dict(variant="rdn"), dict(variant="rla", conv_size=4, output_gate=True),
                                     dict(variant="rdn", keep_softmax=[1])])
def test_cached_greedy_equals_recompute(options):
    model = converted_llama(**options)
    ids = torch.randint(0, 128, (1, 7))
    cached = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(cached, recompute_greedy(model, ids, 10))


def test_gpt2_cached_greedy_equals_recompute():
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    convert_model(model, ConversionConfig(variant="rla"))
    ids = torch.randint(1, 128, (1, 6))
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8), recompute_greedy(model, ids, 8))


def test_state_memory_does_not_grow_and_kept_layers_keep_a_kv_cache():
    model = converted_llama(variant="rdn", keep_softmax=[1])
    sizes = {}
    for new_tokens in (4, 40):
        out = model.generate(torch.randint(0, 128, (1, 5)), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, return_dict_in_generate=True)
        cache = out.past_key_values
        layers = cache.layers
        assert isinstance(layers[0], RecurrentStateLayer) and isinstance(layers[2], RecurrentStateLayer)
        assert not isinstance(layers[1], RecurrentStateLayer) and layers[1].keys.shape[-2] == 5 + new_tokens - 1
        assert cache.get_seq_length() == 5 + new_tokens - 1
        sizes[new_tokens] = sum(s.numel() for s in layers[0].recurrent_state)
    assert sizes[4] == sizes[40] == 2 * 4 * 16 * 16  # (S, R) x heads x K x V


def test_batched_left_padded_generation_matches_single_prompts():
    model = converted_llama(variant="rdn")
    a, b = torch.randint(1, 128, (1, 6)), torch.randint(1, 128, (1, 3))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 6:], recompute_greedy(model, a, 5)[0, 6:])
    assert torch.equal(out[1, 6:], recompute_greedy(model, b, 5)[0, 3:])


@pytest.mark.parametrize("options", [dict(variant="rdn"), dict(variant="rla", conv_size=4),
                                     dict(variant="rdn", keep_softmax=[1])])
def test_static_cache_generation_of_a_left_padded_batch_matches_single_prompts(options):
    # cache_implementation="static": generate() made a 4-D mask as wide as the cache for the prefill (the current
    # tokens first, not last: a left-padded batch read its padding from the wrong columns and numbered its pads),
    # and a kept softmax layer's static keys did not fit the masks sized by a converted layer (a RuntimeError)
    from rla_convert.models.cache import REAL_TOKENS

    model = converted_llama(**options)
    a, b = torch.randint(1, 128, (1, 6)), torch.randint(1, 128, (1, 3))
    ids = torch.cat([a, torch.cat([torch.randint(1, 128, (1, 3)), b], 1)])  # the pads are random tokens
    mask = torch.tensor([[1] * 6, [0] * 3 + [1] * 3])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         pad_token_id=0, cache_implementation="static", return_dict_in_generate=True)
    for row, prompt in enumerate((a, b)):  # against generate() too: min_new_tokens holds the end-of-text token back
        alone = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(out.sequences[row, 6:], alone[0, prompt.shape[1]:])
    cache = output_cache(out)
    assert isinstance(cache, tf.StaticCache) and isinstance(cache.layers[0], RecurrentStateLayer)
    assert cache.layers[0].get_mask_sizes(1) == (10, 0)  # the static keys' length: 6 + 5 - 1
    assert getattr(cache, REAL_TOKENS) is None  # handed to one call's layers only


@pytest.mark.parametrize("options", [dict(variant="rdn"), dict(variant="rdn", keep_softmax=[1])])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_chunked_prefill_decodes_what_one_prefill_does(options, cache):
    # generate(prefill_chunk_size=) prefills in pieces, and for a static cache first allocates every layer's keys
    # (transformers' early initialisation): a converted layer's slot then held an empty static layer, refused as
    # "already holds StaticLayer data" until 2026-12-05
    model = converted_llama(**options)
    ids = torch.randint(1, 128, (2, 10))
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        whole = model.generate(ids, **settings)
        chunked = model.generate(ids, **settings, prefill_chunk_size=4, cache_implementation=cache)
    assert torch.equal(chunked, whole)


def test_static_cache_generation_compiled_as_on_cuda_decodes_the_same():
    # On CUDA generate() compiles the forward for a static cache (it asks the cache whether it is compileable: the
    # converted layers say yes); forced on CPU here, a hybrid's left-padded batch decodes what eager decoding does
    model = converted_llama(variant="rdn", keep_softmax=[1])
    ids = torch.randint(1, 128, (2, 6))
    mask = torch.tensor([[1] * 6, [0] * 2 + [1] * 4])
    settings = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    compiled = tf.CompileConfig()
    compiled._compile_all_devices = True  # transformers' own switch for compiling off CUDA
    with torch.no_grad():
        eager = model.generate(ids, **settings)
        out = model.generate(ids, **settings, cache_implementation="static", compile_config=compiled)
    assert getattr(model, "_compiled_call", None) is not None  # it did compile
    assert torch.equal(out, eager)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("options", [dict(variant="rdn", conv_size=4), dict(variant="rdn", keep_softmax=[1])])
def test_forward_compiled_with_fullgraph_decodes_the_eager_tokens_without_recompiling(options, cache):
    # transformers' recipe for fast decoding, model.forward = torch.compile(model.forward, fullgraph=True): the
    # state writes' inference-mode checks had made it an error; now one graph for the prefill, one for every step
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = converted_llama(**options)
    ids = torch.randint(1, 128, (2, 7))
    mask = torch.tensor([[1] * 7, [0] * 2 + [1] * 5])
    settings = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                    cache_implementation=cache)
    with torch.no_grad():
        eager = model.generate(ids, **settings)
        counter = CompileCounterWithBackend("aot_eager")  # functionalized, as inductor takes it
        model.forward = torch.compile(model.forward, fullgraph=True, backend=counter)
        assert torch.equal(model.generate(ids, **settings), eager)
    # a hybrid's kept layer on the dynamic cache grows its keys: one more graph, dynamic in that length
    assert counter.frame_count <= (3 if cache == "dynamic" and options.get("keep_softmax") else 2)


def test_a_static_cache_called_without_the_converted_forward_reads_the_current_columns():
    # the base model called directly (no 2-D mask handed over): a static cache's 4-D mask has the current tokens
    # from the tokens seen on, prefill and decode
    model = converted_llama(variant="rdn")
    ids, step = torch.randint(1, 128, (2, 6)), torch.randint(1, 128, (2, 1))
    mask = torch.tensor([[1] * 6, [0] * 2 + [1] * 4])
    longer = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = []
    with torch.no_grad():
        for cache in (tf.DynamicCache(config=model.config), tf.StaticCache(config=model.config, max_cache_len=12)):
            kwarg = {cache_argument(model): cache}
            first = model.model(ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwarg)
            second = model.model(step, attention_mask=longer, position_ids=positions[:, -1:] + 1, use_cache=True,
                                 **kwarg)
            hidden.append((first.last_hidden_state, second.last_hidden_state))
    assert (hidden[1][0] - hidden[0][0]).abs().max() < 1e-5
    assert (hidden[1][1] - hidden[0][1]).abs().max() < 1e-5


def test_generation_from_inputs_embeds_continues_as_from_the_ids():
    # generate() refuses inputs_embeds unless prepare_inputs_for_generation's signature names it: the converted class's
    # own method (it hands the real tokens on) keeps the base's signature
    model = converted_llama(variant="rdn")
    ids = torch.randint(1, 128, (2, 6))
    with torch.no_grad():
        from_ids = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), max_new_tokens=5,
                                     min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(from_embeds, from_ids[:, 6:])


def test_a_left_padded_batch_without_position_ids_numbers_its_real_tokens():
    # a plain forward (batched scoring, a hand-written decode loop) passes the mask and no position_ids: the base model
    # would number the pads too, and RoPE before SiLU and the L2 norm is not relative in a converted layer
    model = converted_llama(variant="rdn")
    a, b = torch.randint(1, 128, (1, 7)), torch.randint(1, 128, (1, 4))
    ids = torch.cat([a, torch.cat([torch.randint(1, 128, (1, 3)), b], 1)])  # the pads are random tokens too
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    step = torch.randint(1, 128, (2, 1))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        alone = model(input_ids=b, use_cache=True)
        assert (out.logits[1, 3:] - alone.logits[0]).abs().max() < 1e-5
        assert (out.logits[0] - model(input_ids=a).logits[0]).abs().max() < 1e-5
        # one decode step on the cache, the mask covering the cached tokens as transformers expects
        cache_kwarg = cache_argument(model)
        nxt = model(input_ids=step, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
                    **{cache_kwarg: output_cache(out)}, use_cache=True)
        ref = model(input_ids=step[1:], **{cache_kwarg: output_cache(alone)}, use_cache=True)
        assert (nxt.logits[1] - ref.logits[0]).abs().max() < 1e-5
    assert "position_ids" in inspect.signature(model.forward).parameters  # generate() still sees the base's forward
    with torch.no_grad():
        by_position = model(ids, mask).logits  # the mask passed positionally is read too
        assert (by_position[1, 3:] - alone.logits[0]).abs().max() < 1e-5
        given = (mask.cumsum(-1) - 1).clamp(min=0)
        assert torch.equal(model(ids, mask, given).logits, by_position)  # position_ids by position are the caller's
    # what only the base model reads (Qwen3's dict of masks per layer type) is handed on untouched
    qwen3 = tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, head_dim=16)).eval()
    convert_model(qwen3, ConversionConfig(variant="rdn"))
    with torch.no_grad():
        assert torch.equal(qwen3(a, attention_mask={"full_attention": None}).logits, qwen3(a).logits)


def test_decode_steps_update_the_same_state_buffers_in_place():
    # A captured CUDA graph replays against fixed addresses: every decode step must write the states and
    # the conv tails into the tensors the prefill left, and hold no view of a longer input.
    model = converted_llama(variant="rdn", conv_size=4)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        layer = cache.layers[0]
        held = [*layer.recurrent_state, *layer.conv_state.values()]
        assert all(t._base is None for t in held)  # the conv tail is not a view of the 9-token input
        before = [t.clone() for t in held]
        logits = []
        for _ in range(3):
            token = out.logits[:, -1:].argmax(-1)
            out = model(token, past_key_values=cache, use_cache=True)
            logits.append(out.logits)
        after = [*layer.recurrent_state, *layer.conv_state.values()]
        assert [t.data_ptr() for t in after] == [t.data_ptr() for t in held]
        assert all(not torch.equal(a, b) for a, b in zip(after, before))  # written, not left stale
        # the same steps storing fresh tensors each time (no in-place writes at all) give the same logits
    import rla_convert.models.cache as cache_module

    fresh = lambda held, new: tuple(t.clone() for t in new)  # noqa: E731
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache_module, "_write", fresh)
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        for step in range(3):
            token = out.logits[:, -1:].argmax(-1)
            out = model(token, past_key_values=cache, use_cache=True)
            assert torch.equal(out.logits, logits[step])


def test_states_still_read_by_autograd_or_made_in_inference_mode_are_not_overwritten():
    model = converted_llama(variant="rdn", conv_size=4)
    ids = torch.randint(0, 128, (1, 6))
    # a prefill with grad, one decode step without, then the prefill's backward: its states are intact
    out = model(ids, use_cache=True)
    with torch.no_grad():
        model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
    out.logits.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    # a prefill under inference_mode, decoding continued under no_grad (generate's own mode)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
    with torch.no_grad():
        step = model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
    assert torch.isfinite(step.logits).all()


def test_a_static_cache_counts_tokens_on_the_device_where_a_captured_graph_replays_it():
    # A CUDA graph replays a decode step with every host-side value as it was when captured. A kept softmax layer's
    # mask is sized by the first full-attention cache layer, here a converted one: had it answered the query offset
    # from its host count, a replayed step would mask out every key written after the capture (graphed hybrids left
    # the eager tokens after 14-18 steps on the H100, 2026-12-05). Emulated here: the host counts frozen at a
    # "capture" step decode what counting them does.
    model = converted_llama(variant="rdn", keep_softmax=[1])
    ids = torch.randint(1, 128, (2, 5))

    def decode(freeze_at: int) -> torch.Tensor:
        cache = tf.StaticCache(config=model.config, max_cache_len=24)
        kwarg = {cache_argument(model): cache}
        out = model(ids, use_cache=True, cache_position=torch.arange(5), **kwarg)
        token, tokens = out.logits[:, -1:].argmax(-1), []
        converted = [layer for layer in cache.layers if isinstance(layer, RecurrentStateLayer)]
        counters = [layer.cumulative_length.data_ptr() for layer in converted]  # a replay writes these addresses
        for step in range(16):
            counts = [layer.seen_tokens for layer in converted]
            if step >= freeze_at:
                for layer in converted:
                    layer.seen_tokens = 5 + freeze_at
            position = torch.tensor([5 + step])  # given, as GreedyStep does: the mask alone reads the count
            out = model(token, use_cache=True, cache_position=position, position_ids=position.expand(2, 1), **kwarg)
            for layer, count in zip(converted, counts):
                layer.seen_tokens = count + 1
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
        assert [layer.cumulative_length.data_ptr() for layer in converted] == counters  # advanced in place
        return torch.cat(tokens, 1), cache

    with torch.no_grad():
        (frozen, cache), (counted, _) = decode(freeze_at=2), decode(freeze_at=16)
    assert torch.equal(frozen, counted)
    assert isinstance(cache.layers[0].get_seq_length(), torch.Tensor)  # what the masks read, advanced on the device
    assert int(cache.layers[0].get_seq_length()) == 5 + 16


@pytest.mark.gpu
def test_capturing_a_converted_layers_first_static_step_is_refused():
    # made inside a capture, the device count would be a constant that every replay refills: refused, not frozen
    model = converted_llama(variant="rdn", keep_softmax=[1]).cuda()
    ids = torch.randint(1, 128, (1, 3), device="cuda")
    kwarg = cache_argument(model)
    with torch.no_grad():
        model(ids, use_cache=True, **{kwarg: tf.StaticCache(config=model.config, max_cache_len=8)})  # compiles
        fresh = tf.StaticCache(config=model.config, max_cache_len=8)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with pytest.raises(RuntimeError, match="run one step \\(the prefill\\) before capturing"):
                model(ids, use_cache=True, cache_position=torch.arange(3, device="cuda"), **{kwarg: fresh})

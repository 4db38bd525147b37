"""Greedy decoding whose every step is one replay of a captured CUDA graph, for a teacher and for its
converted model alike, and for a hybrid that keeps some softmax layers.

At batch 1 (and even at batch 32) a 135M model's decode step is bound by the host: ~1,500 kernel
launches from Python per token (BENCHMARKS.md). A CUDA graph replays the same launches with no Python in
between, which leaves the device work: the weights once, plus the teacher's KV cache or the converted
model's fixed-size states. Everything a replay touches lives at fixed addresses:

- the input token and its position are device tensors that the step itself advances in place (the
  argmax of the logits is copied into the token, the position goes up by one), so a replay is a whole
  greedy step with no host work at all;
- a converted model keeps its recurrent states in the cache's tensors, written in place each step
  (``RecurrentStateLayer.write_recurrent_state``); its token counter is host-side and is advanced here;
- a softmax model (the teacher) decodes into a ``StaticCache`` sized for the whole run, addressed by the
  position tensor, as transformers does for torch.compile's CUDA graphs; so does a hybrid, whose converted
  layers stand in for the static layers they replaced (``RecurrentStateLayer``: states in place, the
  cache's length for the kept softmax layers' masks, and a token count on the device that those masks read,
  so that a replay advances it as transformers' static layers advance theirs).

``GreedyStep`` is the step itself (it runs eagerly too, on any device: that is how the tests check it
against ``generate``); ``GraphedGreedyStep`` captures it on CUDA.
"""
from __future__ import annotations

import torch

from ..compat import output_cache
from ..config import VARIANTS
from ..inspect import describe_layers
from ..models.cache import RecurrentStateLayer
from ..models.modeling_rla import _real_token_positions

PREFILL_CHUNK = 2048  # a static cache's prefill mask is [B, 1, chunk, max_len]: chunks keep it small


def layer_kinds(model) -> list[str]:
    """Each decoder layer's kind (describe_layers): one of VARIANTS where converted."""
    return [layer.kind for layer in describe_layers(model)]


def converted_share(kinds: list[str]) -> tuple[int, int]:
    """(converted decoder layers, decoder layers) of ``layer_kinds``: all converted, the cache holds states only."""
    return sum(kind in VARIANTS for kind in kinds), len(kinds)


def sliding_window_refusal(model, kinds: list[str]) -> str | None:
    """Why a model cannot decode as a CUDA graph for its softmax layers' cache, or None: a layer left as softmax
    attention with a sliding window (Gemma's, Qwen2's local layers) writes its static cache where a host-side counter
    says (transformers' sliding static layers), which a captured graph would replay frozen. ``kinds``: layer_kinds."""
    from transformers import StaticCache

    if all(kind in VARIANTS for kind in kinds):
        return None
    layers = StaticCache(config=model.config, max_cache_len=1).layers  # allocates nothing until written
    sliding = [i for i, (kind, layer) in enumerate(zip(kinds, layers))
               if kind not in VARIANTS and getattr(layer, "is_sliding", False)]
    if not sliding:
        return None
    return (f"softmax layers with a sliding window (decoder layers {', '.join(map(str, sliding))}) decode eagerly: "
            "their static cache writes by a host-side counter that a CUDA graph would freeze")


def graph_refusal(model, kinds: list[str], padded: bool) -> str | None:
    """Why this model cannot decode as a CUDA graph, or None: left-padded prompts on a model that keeps softmax layers
    (their steps would need the padding mask), or a kept sliding-window layer (sliding_window_refusal). ``kinds``:
    layer_kinds."""
    converted, layers = converted_share(kinds)
    if padded and converted < layers:
        return "left-padded prompts on a softmax model decode eagerly: its steps need the padding mask"
    return sliding_window_refusal(model, kinds)


def padded_positions(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts [B, T], positions numbered per row as ``generate`` numbers a converted model's
    (modeling_rla's rule): (the prompt's position ids, 0 on the pads; each row's next position [B, 1])."""
    positions = _real_token_positions(attention_mask, attention_mask.shape[1])
    return positions, attention_mask.long().sum(-1, keepdim=True)


def prefill(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """One forward over the prompt ``ids`` [B, T] that fills the model's own cache, left-padded prompts numbered
    per row (``padded_positions``): (the output, each row's next position [B, 1], or None without a mask)."""
    extra, next_position = {}, None
    if attention_mask is not None:
        positions, next_position = padded_positions(attention_mask)
        extra = dict(attention_mask=attention_mask, position_ids=positions)
    return model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra), next_position


class GreedyStep:
    """Prefill ``ids`` [B, T], then each call decodes one greedy token for every row, in place.

    ``max_new_tokens`` sizes the static cache of a model that keeps softmax layers (a fully converted one needs
    no size). After a call, ``token`` [B, 1] holds the token just generated.
    """

    def __init__(self, model, ids: torch.Tensor, max_new_tokens: int, cache_kwarg: str = "past_key_values",
                 attention_mask: torch.Tensor | None = None):
        """``attention_mask`` [B, T] (left padding, fully converted models only): the prefill skips the pads, and
        each row's positions count its own tokens (as ``generate`` numbers them); steps need no mask then."""
        from transformers import StaticCache

        self.model, self.cache_kwarg = model, cache_kwarg
        B, T = ids.shape
        device = ids.device
        kinds = layer_kinds(model)
        refusal = graph_refusal(model, kinds, padded=attention_mask is not None)
        if refusal:
            raise ValueError(f"graphed decoding: {refusal}")
        converted, layers = converted_share(kinds)
        next_position = None
        with torch.no_grad():
            if converted == layers:
                out, next_position = prefill(model, ids, attention_mask)
                self.cache = output_cache(out)
            else:  # KV layers: a static cache, whose tensors stay put while decoding
                self.cache = StaticCache(config=model.config, max_cache_len=T + max_new_tokens)
                for start in range(0, T, PREFILL_CHUNK):
                    end = min(T, start + PREFILL_CHUNK)
                    out = model(input_ids=ids[:, start:end], use_cache=True, logits_to_keep=1,
                                cache_position=torch.arange(start, end, device=device),
                                **{cache_kwarg: self.cache})
        self.token = out.logits[:, -1:].argmax(-1)
        self.position = torch.full((1,), T, dtype=torch.long, device=device)
        # each row's next position: T, or its own token count when left-padded
        self.row_position = next_position if next_position is not None else self.position.expand(B, 1).clone()
        self.recurrent = [layer for layer in getattr(self.cache, "layers", []) if isinstance(layer, RecurrentStateLayer)]

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        out = self.model(input_ids=self.token, use_cache=True, cache_position=self.position,
                         position_ids=self.row_position, **{self.cache_kwarg: self.cache})
        self.token.copy_(out.logits[:, -1:].argmax(-1))
        self.position.add_(1)
        self.row_position.add_(1)
        return out.logits


class GraphedGreedyStep:
    """``GreedyStep`` captured once as a CUDA graph; each call replays it (one greedy token per row)."""

    def __init__(self, step: GreedyStep, warmup: int = 2):
        if step.token.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.step = step
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # first calls outside the graph: lazy inits, Triton compiles
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        counts = [layer.seen_tokens for layer in step.recurrent]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step()
        for layer, seen in zip(step.recurrent, counts):  # capture ran the Python but not the kernels
            layer.seen_tokens = seen

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        for layer in self.step.recurrent:
            layer.seen_tokens += 1
        return self.logits

"""Greedy generation whose every step can be one CUDA-graph replay: the converted model's fast decode, for users.

Eager decoding of a small model is bound by the host (~2,000 kernel launches from Python a token: 43 ms a
token for a converted SmolLM2-135M on an H200, BENCHMARKS.md). Captured once and replayed, the same step
costs 5 ms and stays flat with the context, because the converted layers' states are fixed-size and are
updated in place. ``greedy_generate`` runs that: prefill, capture (after a few eager warm-up steps), replay.

    from rla_convert.generate import greedy_generate
    result = greedy_generate(model, input_ids, max_new_tokens=256, eos_token_id=tokenizer.eos_token_id)
    result.tokens        # [B, <= max_new_tokens] (each row cut after its first eos; pad_token_id after it)
    result.ms_per_token  # decode time per timed step, prefill excluded (None: no step was timed)

Greedy only (the argmax runs inside the graph). ``cuda_graph``: None captures on CUDA when the model allows it
(fully converted; a model that keeps softmax layers, teacher or hybrid, without left padding and without sliding
windows), True insists (an error says why it cannot), False decodes eagerly (on the model's own cache). The graphed
step is ``bench.graphed.GreedyStep``, the one the benchmark times.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .bench.graphed import GraphedGreedyStep, GreedyStep, graph_refusal, layer_kinds, prefill
from .compat import cache_argument, output_cache
from .errors import UserError

WARMUP_STEPS = 2  # eager steps before the capture: lazy initialisation and Triton compiles happen there
EOS_CHECK_EVERY = 16  # replays between looks at the tokens (a look is a device sync)


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # [B, n] generated token ids, n <= max_new_tokens
    prefill_ms: float
    ms_per_token: float | None  # mean over the timed decode steps (the capture's warm-up excluded); None if none
    graphed: bool
    steps: int = 0  # decode steps run after the prefill (fewer than max_new_tokens - 1 when every row hit eos)
    note: str = ""  # why a graph was not used where one could have been


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graph_refusal(model, device, padded: bool) -> str | None:
    """Why this model cannot decode as a CUDA graph here, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; the model is on {device}"
    return graph_refusal(model, layer_kinds(model), padded)


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                    pad_token_id: int | None = None, cuda_graph: bool | None = None,
                    attention_mask: torch.Tensor | None = None) -> GenerationResult:
    """Greedy continuation of ``input_ids`` [B, T] (on the model's device); see the module docstring.
    ``attention_mask`` [B, T]: 0 for left padding (each row's positions then count its own tokens).
    ``eos_token_id``: one id or several (a row ends at the first of any)."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise UserError(f"input_ids must be [batch, tokens] with at least one token, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise UserError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                            f"{tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        if bool((mask[:, :-1] & ~mask[:, 1:]).any()) or not bool(mask[:, -1].all()):
            raise UserError("attention_mask must pad on the left only (zeros before a row's tokens, none after)")
        attention_mask = None if bool(mask.all()) else attention_mask.to(input_ids.device)
    if cuda_graph and max_new_tokens <= WARMUP_STEPS + 1:
        raise UserError(f"cuda_graph=True needs more than {WARMUP_STEPS + 1} new tokens ({WARMUP_STEPS} eager warm-up "
                        f"steps come before the capture); got max_new_tokens={max_new_tokens}")
    device = input_ids.device
    refusal = _graph_refusal(model, device, attention_mask is not None)
    if cuda_graph and refusal:
        raise UserError(f"cuda_graph=True: {refusal}")
    use_graph = cuda_graph is not False and refusal is None and max_new_tokens > WARMUP_STEPS + 1
    note = refusal if cuda_graph is None and refusal and device.type == "cuda" else ""
    eos = _eos_ids(eos_token_id)

    model.eval()
    _sync(device)
    start = time.perf_counter()
    if use_graph:
        step = GreedyStep(model, input_ids, max_new_tokens=max_new_tokens, cache_kwarg=cache_argument(model),
                          attention_mask=attention_mask)
    else:
        step = _CachedStep(model, input_ids, cache_argument(model), attention_mask)
    _sync(device)
    prefill_ms = (time.perf_counter() - start) * 1e3

    out = torch.empty(input_ids.shape[0], max_new_tokens, dtype=torch.long, device=device)
    out[:, 0] = step.token[:, 0]  # the prefill's own prediction is the first new token
    produced, timed_steps = 1, 0
    replay = step
    if use_graph:
        # The capture's eager warm-up steps generate real tokens: they are recorded; the capture itself runs
        # the step's Python without its kernels, so it generates none.
        recording = _Recording(step, out, produced)
        replay = GraphedGreedyStep(recording, warmup=WARMUP_STEPS)
        produced = recording.next
    finished = torch.zeros(out.shape[0], dtype=torch.bool, device=device)
    checked = 0  # tokens already looked at for eos
    _sync(device)
    t0 = time.perf_counter()
    while produced < max_new_tokens:
        replay()
        out[:, produced] = step.token[:, 0]
        produced += 1
        timed_steps += 1
        if eos and produced % EOS_CHECK_EVERY == 0:
            finished |= _is_eos(out[:, checked:produced], eos).any(dim=1)
            checked = produced
            if bool(finished.all()):
                break
    _sync(device)
    decode_s = time.perf_counter() - t0
    tokens = _cut_after_eos(out[:, :produced], eos, pad_token_id)
    ms = decode_s * 1e3 / timed_steps if timed_steps else None
    return GenerationResult(tokens, prefill_ms, ms, use_graph, produced - 1, note)


class _CachedStep:
    """An eager greedy step on the model's own cache: any model, hybrids that keep softmax layers included.
    With left padding it carries the mask (softmax layers read it every step) and numbers each row's positions
    by its own tokens, as ``generate`` does."""

    def __init__(self, model, ids: torch.Tensor, cache_kwarg: str, attention_mask: torch.Tensor | None = None):
        out, self.position = prefill(model, ids, attention_mask)
        self.model, self.cache_kwarg, self.cache = model, cache_kwarg, output_cache(out)
        self.mask = attention_mask
        self.token = out.logits[:, -1:].argmax(-1)

    def __call__(self) -> torch.Tensor:
        extra = {}
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
            extra = dict(attention_mask=self.mask, position_ids=self.position)
        out = self.model(input_ids=self.token, use_cache=True, **{self.cache_kwarg: self.cache}, **extra)
        if self.position is not None:
            self.position = self.position + 1
        self.token = out.logits[:, -1:].argmax(-1)
        return out.logits


class _Recording:
    """A GreedyStep whose eager calls (the capture's warm-up) also store the token they generate."""

    def __init__(self, step: GreedyStep, out: torch.Tensor, start: int):
        self.step, self.out, self.next = step, out, start
        self.token, self.recurrent = step.token, step.recurrent

    def __call__(self):
        logits = self.step()
        if not torch.cuda.is_current_stream_capturing():
            self.out[:, self.next] = self.step.token[:, 0]
            self.next += 1
        return logits


def _is_eos(tokens: torch.Tensor, eos: list[int]) -> torch.Tensor:
    return torch.isin(tokens, torch.tensor(eos, device=tokens.device))


def _eos_ids(eos: int | list[int] | None) -> list[int]:
    return [eos] if isinstance(eos, int) else list(eos or [])


def _cut_after_eos(tokens: torch.Tensor, eos: int | list[int] | None, pad_token_id: int | None) -> torch.Tensor:
    """Tokens after each row's first eos become ``pad_token_id`` (the first eos id when None); columns no row
    needs go."""
    eos = _eos_ids(eos)
    if not eos:
        return tokens
    is_eos = _is_eos(tokens, eos)
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
    tokens = tokens.masked_fill(after, eos[0] if pad_token_id is None else pad_token_id)
    finished = is_eos.any(1)
    if bool(finished.all()):
        last = int(is_eos.float().argmax(1).max())  # the latest first-eos over the rows
        tokens = tokens[:, :last + 1]
    return tokens

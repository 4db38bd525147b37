"""Per-layer decoding state for converted layers, kept inside transformers' own ``Cache`` objects.

A converted layer stores the pair (S, R) and the tail of its short-convolution inputs. It does so in a
``RecurrentStateLayer`` that takes the place of whatever entry the model's ``DynamicCache`` had at that
layer index (a ``DynamicLayer`` for a Llama-family model, a ``LinearAttentionLayer`` for Qwen3-Next),
so kept softmax layers keep their normal KV cache beside it.

Why not transformers' ``LinearAttentionLayer``: it cannot report a sequence length, so a model whose
layers are all linear breaks ``generate`` (it calls ``get_seq_length()``), and its recurrent state is
hidden until a conv state is written. This layer counts the tokens it has absorbed, which answers
``get_seq_length`` and ``get_mask_sizes`` exactly as a KV layer would; the memory it holds does not
grow with the context.

In a ``StaticCache`` (``cache_implementation="static"``) the layer stands in for the static layer it replaced:
it answers ``get_mask_sizes`` with the cache's fixed length (transformers sizes every full-attention mask by the
first full-attention layer, and a kept softmax layer's static keys are that long) and says it is compileable
(else transformers drops the causal mask of one-token steps, and a kept layer reads the cache's empty slots).
Such a mask no longer has the current tokens last, so the converted layers read which of them are real from
the 2-D mask, which the converted model's forward hands over through the cache (``REAL_TOKENS``).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicLayer


REAL_TOKENS = "_rla_real_tokens"  # cache attribute: [B, T] bool, the current tokens that are not padding


class RecurrentStateLayer(CacheLayerMixin):
    is_croppable = False
    supports_early_init = False
    _layer_type = "residual_linear_attention"  # lets a config's layer_types name it

    def __init__(self, static_length: int | None = None, **kwargs):
        super().__init__()
        self.recurrent_state: tuple[torch.Tensor, ...] | None = None  # (S, R), or (S,) for gdn; [B, H, K, V] fp32
        self.conv_state: dict[str, torch.Tensor] = {}  # name -> last (kernel - 1) inputs, [B, kernel - 1, C]
        self.seen_tokens = 0
        self.static_length = static_length  # a static cache's full-attention length: what its masks span
        # in a static cache, seen_tokens again as a device tensor advanced in place (count_tokens), as transformers'
        # static layers keep theirs: masks read it (get_seq_length), and a captured CUDA graph replays its advance
        # where a host-side count would stay at its value when captured (a kept softmax layer then stops seeing new
        # keys: graphed hybrids left the eager tokens after 14-18 steps on the H100, 2026-12-05)
        self.cumulative_length: torch.Tensor | None = None

    @property
    def is_compileable(self) -> bool:
        return self.static_length is not None

    def write_recurrent_state(self, new: tuple[torch.Tensor, ...]) -> None:
        """Store the states after a call: into the tensors already held when they fit (in place), so a
        decode step keeps the same buffers from token to token -- what a captured CUDA graph replays
        against; as new tensors otherwise (the first call, a new batch size, autograd through them, or
        tensors made under inference_mode outside it).

        In place means a state tuple read from this layer earlier is overwritten by the next step:
        ``copy.deepcopy`` a cache (or clone its states) to keep a prefix for reuse."""
        self.recurrent_state = _write(self.recurrent_state, new)

    def count_tokens(self, n: int, device: torch.device) -> None:
        """Record ``n`` more tokens absorbed by the states (``seen_tokens``; in a static cache its device copy too)."""
        self.seen_tokens += n
        if self.static_length is None:
            return
        if self.cumulative_length is None or self.cumulative_length.device != device:
            if not torch.compiler.is_compiling() and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                # made inside a capture, the count would be a constant refilled at every replay: frozen again
                raise RuntimeError("a converted layer's first step on a static cache was captured as a CUDA graph; "
                                   "run one step (the prefill) before capturing")
            self.cumulative_length = torch.full((), self.seen_tokens - n, dtype=torch.long, device=device)
            if not torch.compiler.is_compiling():
                torch._dynamo.mark_static_address(self.cumulative_length, guard=False)
        self.cumulative_length.add_(n)

    def write_conv_state(self, name: str, tail: torch.Tensor) -> None:
        held = self.conv_state.get(name)
        self.conv_state[name] = _write(None if held is None else (held,), (tail,))[0]

    def lazy_initialization(self, key_states=None, value_states=None) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("a converted (linear) layer has no key/value cache; it stores recurrent states")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.static_length is not None:
            return self.static_length, 0
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int | torch.Tensor:
        if self.cumulative_length is not None:  # a static cache's (as its static layers answer: a tensor)
            return self.cumulative_length
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.recurrent_state, self.conv_state, self.seen_tokens = None, {}, 0
        if self.cumulative_length is not None:
            self.cumulative_length.zero_()  # in place: compiled graphs marked its address static

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.recurrent_state is not None:
            self.recurrent_state = tuple(s.index_select(0, beam_idx.to(s.device)) for s in self.recurrent_state)
        self.conv_state = {k: s.index_select(0, beam_idx.to(s.device)) for k, s in self.conv_state.items()}

    def offload(self):  # states are small and fixed-size: nothing worth moving
        pass

    def prefetch(self):
        pass


def _write(held, new):
    keeps_graph = torch.is_grad_enabled() and any(t.requires_grad for t in new)
    compiling = torch.compiler.is_compiling()
    fits = held is not None and len(held) == len(new) and all(
        h.shape == n.shape and h.dtype == n.dtype and h.device == n.device
        and not h.requires_grad  # an autograd graph still reads it (a prefill with grad, backward pending)
        # made under inference_mode, written outside it. Dynamo cannot trace either test (a graph break, an error
        # with fullgraph=True): a compiled step trusts the held tensors, as transformers' static cache does
        and (compiling or torch.is_inference_mode_enabled() or not h.is_inference())
        for h, n in zip(held, new))
    if fits and not keeps_graph:
        for h, n in zip(held, new):
            h.copy_(n)
        return held
    if keeps_graph:
        fresh = tuple(new)
    else:  # own memory: a view (the conv tail) would keep its whole input alive
        fresh = tuple(n.detach().clone() if n._base is not None else n for n in new)
    if not compiling:
        for t in fresh:  # torch.compile's CUDA graphs may then update them in place instead of copying
            torch._dynamo.mark_static_address(t, guard=False)
    return fresh


def _is_empty(layer) -> bool:
    # a static layer allocated ahead holds no token yet (generate's chunked prefill initialises a static cache early)
    if getattr(layer, "keys", None) is not None and layer.keys.numel() > 0 and int(layer.get_seq_length()) > 0:
        return False
    return not any(getattr(layer, "has_previous_state", {}).values())


def state_layer(cache, layer_idx: int) -> RecurrentStateLayer:
    """The ``RecurrentStateLayer`` at ``layer_idx`` of ``cache``, installing one on first use."""
    layers = cache.layers
    while len(layers) <= layer_idx:
        factory = getattr(cache, "layer_class_to_replicate", None) or DynamicLayer
        layers.append(factory())
    current = layers[layer_idx]
    if type(current).__name__ == "RecurrentStateLayer":
        return current
    if not _is_empty(current):
        raise RuntimeError(f"cache layer {layer_idx} already holds {type(current).__name__} data; a converted layer cannot reuse it")
    layers[layer_idx] = RecurrentStateLayer(static_length=_static_length(layers))
    return layers[layer_idx]


def _static_length(layers) -> int | None:
    """The full-attention length of a static cache (its non-sliding static layers', or what a converted layer
    took from them before); None for a cache that grows."""
    for layer in layers:
        if type(layer).__name__ == "RecurrentStateLayer":
            if layer.static_length is not None:
                return layer.static_length
        elif getattr(layer, "max_cache_len", None) is not None and not getattr(layer, "is_sliding", False):
            return layer.max_cache_len
    return None


def install_state_layers(cache, layer_indices) -> None:
    """Put a ``RecurrentStateLayer`` at each converted layer's index before the first forward: generate() turns
    the 2-D mask into a 4-D one for a cache whose layers are all compileable (a fresh ``StaticCache``), and that
    mask tells neither the real tokens' positions nor, at a static cache's width, which current tokens are real."""
    if getattr(cache, "layers", None) is None:
        return
    for layer_idx in layer_indices:
        state_layer(cache, layer_idx)

"""Perplexity over packed windows.

The token stream is cut into consecutive, non-overlapping windows of `window` tokens (the last partial
window is dropped), each scored independently from an empty state: every token is predicted from at
most `window - 1` tokens of context. Packed windows are what distillation trains on, and they score a
linear-attention model and its softmax teacher on exactly the same contexts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor, window: int = 512, batch_size: int = 4, progress: bool = True) -> dict:
    n_windows = token_ids.numel() // window
    if n_windows == 0:
        raise ValueError(f"need at least window={window} tokens, got {token_ids.numel()}")
    windows = token_ids[: n_windows * window].view(n_windows, window)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc="perplexity", unit="batch", disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    mean_nll = total_nll / total_tokens
    return {
        "perplexity": math.exp(mean_nll),
        "nll": mean_nll,
        "tokens_scored": total_tokens,
        "windows": n_windows,
        "window": window,
        "mode": "packed non-overlapping windows, each from an empty state",
    }

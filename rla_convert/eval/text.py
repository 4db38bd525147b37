"""Evaluation text: any source `rla_convert.data` accepts, joined into one token stream."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import iter_documents
from ..errors import UserError


def load_text(path: str | Path) -> str:
    text = "\n\n".join(iter_documents(path))
    if not text.strip():
        raise UserError(f"{path} holds no text")
    return text


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """One long 1-D tensor of token ids (documents joined as written), cut to max_tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)

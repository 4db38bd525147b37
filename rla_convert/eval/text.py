"""Reading evaluation text: plain text, JSONL (a "text" field) or a directory of such files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json")


def load_text(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {path}")
        return "\n\n".join(load_text(f) for f in files)
    if not path.is_file():
        raise UserError(f"text file {str(path)!r} does not exist; accepted: a .txt/.md file, a .jsonl file with a 'text' field, or a directory of them")
    if path.suffix in (".jsonl", ".json"):
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{n}: expected one JSON object with a 'text' field per line") from None
        text = "\n\n".join(docs)
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise UserError(f"{path} holds no text")
    return text


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """One long 1-D tensor of token ids (documents joined as written), cut to max_tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)

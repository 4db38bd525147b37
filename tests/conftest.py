import os
import zlib

import pytest
import torch

# Triton's interpreter must be chosen before triton is first imported; CPU-only machines need it for
# the Triton kernel tests, and it is harmless for everything else there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _round_bf16_to_nearest_even_in_interpreter():
    """Triton's interpreter converts fp32 to bf16 by truncation (`_convert_float` without a rounding mode); the GPU
    rounds to nearest even. Truncation's error is one-sided and twice the GPU's, so bf16 errors under the interpreter
    ran 2-3x the GPU's and tests near their bound failed on the CPU alone (2026-12-04). Here the interpreter's
    fp32 -> bf16 conversion rounds as torch and the GPU do; tests/kernels/test_interpreter_rounding.py checks that it took."""
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # no triton: the Triton tests are not collected either
        return
    convert = getattr(interpreter, "_convert_float", None)
    if convert is None or getattr(convert, "rounds_bf16_to_nearest", False):
        return

    def convert_rounding_bf16(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            values = torch.from_numpy(np.array(input, dtype=np.float32))  # a copy, in its shape (0-d too)
            return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return convert(input, input_dtype, output_dtype, rounding_mode)

    convert_rounding_bf16.rounds_bf16_to_nearest = True
    interpreter._convert_float = convert_rounding_bf16


if os.environ.get("TRITON_INTERPRET") == "1":
    _round_bf16_to_nearest_even_in_interpreter()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA: run on the GPU machine (README, developer section)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh but reproducible random inputs: each test gets its own seed from its name."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


WORDS = ("the grass is green sky blue sun yellow here we go there and back again what pass key "
         "remember it a of to in is was for on with as by at from").split()


def word_text(n_words: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n_words,), generator=g))


@pytest.fixture(scope="session")
def word_tokenizer():
    """A word-level tokenizer trained in the test (nothing downloaded), for tiny random checkpoints."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def word_corpus(tmp_path_factory):
    """A directory of 40 short text documents for distillation runs."""
    data = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (data / f"doc{i:02d}.txt").write_text(word_text(120, seed=i))
    return data

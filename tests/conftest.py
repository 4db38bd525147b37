import os
import zlib

import pytest
import torch

# Triton's interpreter must be chosen before triton is first imported; CPU-only machines need it for
# the Triton kernel tests, and it is harmless for everything else there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


if os.environ.get("TRITON_INTERPRET") == "1":
    try:  # bf16 roundings and dots as the GPU's, so that the kernel tests measure the kernels, not the interpreter
        from rla_kernels.triton_utils import interpreter_dots_ignore_layout, interpreter_rounds_bf16_to_nearest
    except ImportError:  # no triton: the Triton tests are not collected either
        pass
    else:
        interpreter_rounds_bf16_to_nearest()
        interpreter_dots_ignore_layout()  # the dots' bits the same for a TMA tile as for a pointer one


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

import os
import zlib

import pytest
import torch

# Triton's interpreter must be chosen before triton is first imported; CPU-only machines need it for
# the Triton kernel tests, and it is harmless for everything else there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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

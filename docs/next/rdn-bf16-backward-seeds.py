"""How marginal is test_backward_takes_the_forward_chunk_matrices[no_states_bf16] under the interpreter? Its bf16
gradients against the float64 oracle, for the test's shape, with the inputs drawn from a few seeds (the test itself
gets one seed from its name: tests/conftest.py). Run on the CPU from the repository root:

    PYTHONPATH=tests/kernels:tests TRITON_INTERPRET=1 .venv/bin/python docs/next/rdn-bf16-backward-seeds.py 0 1 2

(prefix PYTHONPATH with a folder whose rla_kernels links to a patched kernels/ to measure a patch: docs/next/README.md).
2026-12-04, main 4b7959b: seed 0 max 0.89e-2, seed 1 dg 1.02e-2, seed 2 dg 1.08e-2 (the test's bound is 1e-2)."""
import sys

import torch
from test_rdn_chunk_triton import check_backward, make_inputs

for seed in [int(a) for a in sys.argv[1:]] or [0]:
    torch.manual_seed(seed)
    inputs, _, _ = make_inputs(B=1, T=37, H=2, K=16, V=16, dtype=torch.bfloat16)
    torch.manual_seed(0)
    errs = check_backward(inputs, None, None, None, 1.0, "clip", None, tol=1.0, chunk_size=16)
    print(seed, " ".join(f"{k} {v:.2e}" for k, v in errs.items()))

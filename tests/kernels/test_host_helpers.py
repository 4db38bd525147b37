"""The launchers' host arithmetic: triton_utils.cdiv and next_power_of_2 give Triton's values without the cost of
Triton's host-side ConstexprFunction wrappers (~5 us a call since Triton 3.4, tens of calls a pass)."""
import sys

import pytest
import torch
import triton

from kerneltools import make_inputs, stub_launches
from rla_kernels.triton_utils import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_are_tritons():
    for a in list(range(-3, 70)) + [2**31 - 1, 2**40 + 5]:
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 16, 64, 1000):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
    lengths = torch.tensor([0, 1, 63, 64, 65, 700], dtype=torch.int32)
    assert torch.equal(cdiv(lengths, 64), triton.cdiv(lengths, 64))


def test_launchers_call_no_triton_host_wrappers(monkeypatch):
    """Both ops' forward and backward launchers (every kernel launch stubbed out) run without triton.cdiv or
    triton.next_power_of_2, so a host-bound prefill does not pay their wrappers per layer."""
    from rla_kernels.rdn import chunk as rdn_chunk
    from rla_kernels.rdn import segmented
    from rla_kernels.rla import chunk as rla_chunk

    for module in (rla_chunk, rdn_chunk, segmented):
        stub_launches(monkeypatch, module, [n for n in dir(module) if n.endswith("_kernel")])

    def refuse(*args, **kw):
        raise AssertionError("a launcher called a Triton host wrapper")

    monkeypatch.setattr(triton, "cdiv", refuse)
    monkeypatch.setattr(triton, "next_power_of_2", refuse)
    inputs, S0, R0 = make_inputs(B=1, T=100, H=2, K=32, V=32, dtype=torch.bfloat16, gates_in_dtype=False)
    do = torch.randn_like(inputs[2])
    for fwd, bwd in ((rla_chunk.chunk_rla_fwd, rla_chunk.chunk_rla_bwd),
                     (rdn_chunk.chunk_rdn_fwd, rdn_chunk.chunk_rdn_bwd)):
        for cu in (None, torch.tensor([0, 30, 100], dtype=torch.int32)):
            args = (inputs, S0, R0) if cu is None else ([x[:, :100] for x in inputs], torch.cat([S0, S0]),
                                                         torch.cat([R0, R0]))
            fwd(*args[0], None, 1.0, "clip", args[1], args[2], cu)
            bwd(*args[0], None, 1.0, "clip", args[1], args[2], cu, do, None, None)

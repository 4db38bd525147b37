"""torch.compile(fullgraph=True) of modules calling rla()/rdn(): no graph breaks, same numbers as eager."""
import pytest
import torch
import torch.nn.functional as F

import rla_kernels.library as library
from kerneltools import RDN_FORWARD_WALKS, record_launches, walk_stores
from rla_kernels import rdn, rla


class TwoLayers(torch.nn.Module):
    """One RLA and one RDN call with initial states and returned states, as a model layer would make them."""

    def forward(self, q, k, v, g, beta, gamma, S0, R0):
        o1, _ = rla(q, k, v, g, beta, gamma, initial_state=(S0, R0), use_qk_l2norm_in_kernel=True, backend="torch")
        o2, (S, R) = rdn(q, k, v, g, beta, gamma, clip=None, initial_state=(S0, None), output_final_state=True,
                         backend="torch")
        return o1 + o2, S, R


def _inputs(T, B=2, H=2, K=16, V=8):
    xs = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V) * 3,
          F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H), torch.rand(B, T, H),
          torch.randn(B, H, K, V), torch.randn(B, H, K, V)]
    return [x.requires_grad_() for x in xs]


def _forward_backward(module, xs):
    o, S, R = module(*xs)
    loss = (o * torch.linspace(-1, 1, o.shape[-1])).sum() + S.square().sum() + R.sum()
    grads = torch.autograd.grad(loss, xs)
    return (o, S, R), grads


def test_fullgraph_compile_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    module = TwoLayers()
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for T in (37, 70):  # a second length must not break the graph either
        xs = _inputs(T)
        out, grads = _forward_backward(compiled, xs)
        ref_out, ref_grads = _forward_backward(module, xs)
        for x, r in zip(out + grads, ref_out + ref_grads):
            assert not torch.isnan(x).any()
            assert ((x - r).norm() / r.norm()).item() < 1e-5


class PackedLayers(torch.nn.Module):
    """Both ops over packed sequences (cu_seqlens), states carried out: the varlen path under compile."""

    def forward(self, q, k, v, g, beta, gamma, S0, R0, cu_seqlens):
        o1, (S1, R1) = rla(q, k, v, g, beta, gamma, initial_state=(S0, R0), output_final_state=True,
                           cu_seqlens=cu_seqlens, backend="torch")
        o2, (S2, R2) = rdn(q, k, v, g, beta, gamma, initial_state=(S0, R0), output_final_state=True,
                           cu_seqlens=cu_seqlens, backend="torch")
        return o1 + o2, S1 + S2, R1 + R2


def test_fullgraph_compile_of_packed_sequences_matches_eager():
    torch._dynamo.reset()
    module = PackedLayers()
    compiled = torch.compile(module, fullgraph=True)
    q, k, v, g, beta, gamma, S0, R0 = _inputs(T=29, B=1)
    S0, R0 = (torch.randn(3, *s.shape[1:]).requires_grad_() for s in (S0, R0))  # three sequences
    xs = [q, k, v, g, beta, gamma, S0, R0]
    cu = torch.tensor([0, 5, 17, 29])
    out, grads = _forward_backward(lambda *a: compiled(*a, cu), xs)
    ref_out, ref_grads = _forward_backward(lambda *a: module(*a, cu), xs)
    for x, r in zip(out + grads, ref_out + ref_grads):
        assert not torch.isnan(x).any()
        assert ((x - r).norm() / r.norm()).item() < 1e-5


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_torch_chunk_op_passes_opcheck(variant):
    # Fake kernel against the real one, schema, autograd registration: what torch.compile relies on.
    q, k, v, g, beta, gamma, S0, R0 = _inputs(T=9)
    cu = torch.tensor([0, 4, 9])
    cases = [
        (variant, q, k, v, g, beta, gamma, S0, R0, None, 0.25, 1.0, "clip"),
        (variant, q, k, v, g, beta, gamma, None, None, None, 0.25, None, "tanh"),
        (variant, q[:1], k[:1], v[:1], g[:1], beta[:1], gamma[:1], S0, None, cu, 0.25, 1.0, "clip"),
    ]
    for args in cases:
        torch.library.opcheck(library.ops.torch_chunk_fwd.default, args)


def test_validate_inside_compile_is_a_clear_error():
    q, k, v, g, beta, gamma, S0, R0 = (x.detach() for x in _inputs(T=4))
    fn = torch.compile(lambda *xs: rla(*xs, validate=True)[0], fullgraph=True)
    with pytest.raises(Exception, match="validate=True reads tensor values"):
        fn(q, k, v, g, beta, gamma)


def test_fullgraph_compile_of_rdn_keeping_its_walk_matches_eager(monkeypatch):
    """rdn(recompute_states=False) with the Triton kernels (the interpreter here): chunk_fwd's saved outputs (the
    walk's chunk states, U, W and X, sized by the fake from shapes alone, a row bound for packed sequences) reach the
    backward in a fullgraph compile at two lengths, dense and packed, with the eager default path's numbers."""
    import sys

    from rla_kernels.rdn.chunk import chunk_rdn_fwd

    chunk = sys.modules[chunk_rdn_fwd.__module__]
    stores = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS, walk_stores)
    torch._dynamo.reset()

    def loss(q, k, v, g, beta, gamma, S0, R0, cu=None, keep=True):
        o, (S, R) = rdn(q, k, v, g, beta, gamma, initial_state=(S0, R0), output_final_state=True, cu_seqlens=cu,
                        backend="triton", recompute_states=not keep)
        return (o * torch.linspace(-1, 1, o.shape[-1])).sum() + S.square().sum() + R.sum()

    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for T, cu in ((37, None), (70, None), (70, torch.tensor([0, 3, 40, 70]))):
        xs = _inputs(T, B=1 if cu is not None else 2, H=1, K=16, V=16)
        if cu is not None:
            xs[6:] = [torch.randn(3, 1, 16, 16, requires_grad=True) for _ in range(2)]
        stores.clear()
        got = torch.autograd.grad(compiled(*xs, cu=cu), xs)
        assert stores == [True]  # one walk, the forward's, storing X too
        ref = torch.autograd.grad(loss(*xs, cu=cu, keep=False), xs)
        for x, r in zip(got, ref):
            assert ((x - r).norm() / r.norm()).item() < 1e-5


def test_fullgraph_compile_of_rla_keeping_its_walk_matches_eager(monkeypatch):
    """rla(recompute_states=False) with the Triton kernels (the interpreter here): chunk_fwd's saved outputs (the
    chunk states h_S, h_R and the residuals r, sized by the fake from shapes alone, a row bound for packed
    sequences) reach the backward in a fullgraph compile at two lengths, dense and packed, with the eager default
    path's numbers; the backward reruns neither walk nor the residual kernel."""
    import sys

    from rla_kernels.rla.chunk import chunk_rla_fwd

    chunk = sys.modules[chunk_rla_fwd.__module__]
    launches = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel"))
    torch._dynamo.reset()

    def loss(q, k, v, g, beta, gamma, S0, R0, cu=None, keep=True):
        o, (S, R) = rla(q, k, v, g, beta, gamma, initial_state=(S0, R0), output_final_state=True, cu_seqlens=cu,
                        backend="triton", recompute_states=not keep)
        return (o * torch.linspace(-1, 1, o.shape[-1])).sum() + S.square().sum() + R.sum()

    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for T, cu in ((37, None), (70, None), (140, torch.tensor([0, 3, 70, 140]))):
        xs = _inputs(T, B=1 if cu is not None else 2, H=1, K=16, V=16)
        if cu is not None:
            xs[6:] = [torch.randn(3, 1, 16, 16, requires_grad=True) for _ in range(2)]
        launches.clear()
        got = torch.autograd.grad(compiled(*xs, cu=cu), xs)
        # the forward's passes, once: the backward took them
        assert launches == ["_state_walk_kernel", "_rla_residual_kernel", "_state_walk_kernel"]
        ref = torch.autograd.grad(loss(*xs, cu=cu, keep=False), xs)
        for x, r in zip(got, ref):
            assert ((x - r).norm() / r.norm()).item() < 1e-5

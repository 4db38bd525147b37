"""The public ops: backend choice, routing, state handling, and the Triton path's torch.library wiring."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import rla_kernels.library as library
from kerneltools import RDN_FORWARD_WALKS, record_launches, stub_launches, walk_stores
from rla_kernels import BackendUnavailableError, choose_backend, rdn, rla
from rla_kernels.backend import ENV_VAR, triton_function

OPS = {"rla": rla, "rdn": rdn}


def rel(x, ref):
    assert not torch.isnan(x).any(), "NaN in result"
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def inputs(B=2, T=19, H=2, K=16, V=16, dtype=torch.float32, N=None):
    xs = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V) * 2,
          F.logsigmoid(torch.randn(B, T, H) + 1), torch.rand(B, T, H), torch.rand(B, T, H)]
    N = B if N is None else N
    init = (torch.randn(N, H, K, V), torch.randn(N, H, K, V))
    return [x.to(dtype) for x in xs], init


def as_f64(xs, init):
    return [x.double() for x in xs], tuple(s.double() for s in init)


@pytest.mark.parametrize("variant", OPS)
def test_default_backend_on_cpu_matches_float64_oracle(variant, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    xs, init = inputs()
    kw = dict(use_qk_l2norm_in_kernel=True, output_final_state=True)
    o, (S, R) = OPS[variant](*xs, initial_state=init, **kw)
    o_ref, (S_ref, R_ref) = OPS[variant](*as_f64(xs, init)[0], initial_state=as_f64(xs, init)[1],
                                         backend="naive", **kw)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5 and rel(R, R_ref) < 1e-5


@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_decode_steps_tokens_and_matches_the_chunked_path(variant, dtype, monkeypatch):
    """A few tokens from a state without autograd take the oracle's token step over the batch (no chunk
    padding or solves): same outputs and states as the chunked code, both against the float64 oracle,
    states in fp32. With autograd the chunked code runs."""
    torch_chunk = importlib.import_module("rla_kernels.rla.torch_chunk")  # rla_kernels.rla is the op

    monkeypatch.delenv(ENV_VAR, raising=False)
    xs, init = inputs(B=3, T=3, dtype=dtype)
    kw = dict(clip=0.8, output_final_state=True)

    def no_chunks(*args):
        raise AssertionError("the chunked code ran")

    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(torch_chunk, "ChunkInputs", no_chunks)
        o, (S, R) = OPS[variant](*xs, initial_state=init, **kw)
        patch.setattr(torch_chunk, "is_decode", lambda *args: False)
        with pytest.raises(AssertionError, match="the chunked code ran"):
            OPS[variant](*xs, initial_state=init, **kw)
    with torch.no_grad():
        monkeypatch.setattr(torch_chunk, "is_decode", lambda *args: False)
        o_chunk, (S_chunk, R_chunk) = OPS[variant](*xs, initial_state=init, **kw)
    o_ref, (S_ref, R_ref) = OPS[variant](*[x.double() for x in xs], initial_state=as_f64(xs, init)[1],
                                         backend="naive", **kw)
    assert o.dtype == dtype and S.dtype == R.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for x, chunk, ref in ((o, o_chunk, o_ref), (S, S_chunk, S_ref), (R, R_chunk, R_ref)):
        assert rel(x, ref) < tol and rel(chunk, ref) < tol
    monkeypatch.undo()
    monkeypatch.setattr(torch_chunk, "ChunkInputs", no_chunks)
    with pytest.raises(AssertionError, match="the chunked code ran"):  # autograd wants the chunked code
        OPS[variant](*[x.requires_grad_() for x in xs], initial_state=init)


def test_final_state_only_when_asked_and_missing_states_are_zeros():
    xs, init = inputs()
    o, final = rla(*xs)
    assert final is None
    zeros = torch.zeros_like(init[0])
    o_half, _ = rdn(*xs, initial_state=(init[0], None))
    o_full, _ = rdn(*xs, initial_state=(init[0], zeros))
    o_naive, _ = rdn(*xs, initial_state=(init[0], None), backend="naive")
    assert rel(o_half, o_full) == 0 and rel(o_half, o_naive) < 1e-5


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert choose_backend(None, torch.device("cpu")) == "torch"
    assert choose_backend(None, torch.device("cuda")) == "triton"  # triton imports on this machine
    assert choose_backend("naive", torch.device("cuda")) == "naive"
    monkeypatch.setenv(ENV_VAR, "naive")
    assert choose_backend(None, torch.device("cpu")) == "naive"
    assert choose_backend("torch", torch.device("cpu")) == "torch"  # the argument beats the environment
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=ENV_VAR):
        choose_backend(None, torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors"):
        choose_backend("triton", torch.device("cpu"))


def test_environment_variable_reaches_the_op(monkeypatch):
    xs, init = inputs(T=5)
    calls = []
    monkeypatch.setattr("rla_kernels.api._NAIVE", {"rla": lambda *a: calls.append(a) or (a[2], None)})
    monkeypatch.setenv(ENV_VAR, "naive")
    rla(*xs)
    assert len(calls) == 1


def test_missing_triton_kernel_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="rla_kernels.rla.no_such_module"):
        triton_function("rla", "no_such_module", "f")
    with pytest.raises(BackendUnavailableError, match="rla_kernels.rla.chunk.chunk_xyz_fwd, which is not there"):
        triton_function("rla", "chunk", "chunk_xyz_fwd")


def _spy_triton(monkeypatch, stand_ins=None):
    """Record which kernel functions the triton path asks for; optionally answer with stand-ins."""
    asked = []

    def lookup(variant, module, name):
        asked.append(name)
        return stand_ins[name] if stand_ins else triton_function(variant, module, name)

    monkeypatch.setattr(library, "triton_function", lookup)
    return asked


@pytest.mark.parametrize("variant", OPS)
def test_triton_decode_routes_to_fused_recurrent(variant, monkeypatch):
    # Runs the real fused-recurrent kernel (under the interpreter on the CPU machine).
    asked = _spy_triton(monkeypatch)
    xs, init = inputs(B=1, T=1, H=1)
    with torch.no_grad():
        o, (S, R) = OPS[variant](*xs, initial_state=init, output_final_state=True, backend="triton")
    o_ref, (S_ref, R_ref) = OPS[variant](*as_f64(xs, init)[0], initial_state=as_f64(xs, init)[1],
                                         output_final_state=True, backend="naive")
    assert asked == [f"fused_recurrent_{variant}_fwd"]
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5 and rel(R, R_ref) < 1e-5


def _torch_stand_ins(variant):
    """The Triton kernels' contract, implemented with the torch backend: tests the wiring, not the kernels."""
    from rla_kernels import chunk_rdn_torch, chunk_rla_torch

    chunk = {"rla": chunk_rla_torch, "rdn": chunk_rdn_torch}[variant]

    def fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, save_wy=False, keep_walk=False,
            keep_tokens=False):
        o, (S, R) = chunk(q, k, v, g, beta, gamma, scale, clip, residual, (S0, R0), True, cu_seqlens)
        # RDN's forward also hands its chunk matrices, and with keep_tokens either forward its walk's per-token
        # tensors, with keep_walk its whole walk, to its backward (library._SAVED): stand-ins of those shapes
        assert save_wy == (variant in library._WITH_WY) and not (keep_walk and keep_tokens)
        keep = library.KEEP_WALK if keep_walk else library.KEEP_TOKENS if keep_tokens else library.KEEP_NOTHING
        saved = [q.new_ones(shape, dtype=dtype) for shape, dtype in library._SAVED[variant](q, v, cu_seqlens, keep)]
        n_wy = int(save_wy)
        return (o, S, R) + tuple(saved[:n_wy]) + ((tuple(saved[n_wy:]),) if keep_walk or keep_tokens else ())

    def bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T, wy=None, walk=None):
        n_wy = int(variant in library._WITH_WY)
        assert (wy is not None) == bool(n_wy)
        specs = library._SAVED[variant](q, v, cu_seqlens, library.KEEP_WALK)[n_wy:]
        kept.append(None if walk is None else "walk" if len(walk) == len(specs) else "tokens")
        if walk is not None:
            assert [(tuple(t.shape), t.dtype) for t in walk] == specs[-len(walk):]
        grads = library.torch_chunk_bwd(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip,
                                        residual, do, dS_T, dR_T)
        return (*grads[:6], None if S0 is None else grads[6], None if R0 is None else grads[7])

    kept = []  # per backward call: what it was handed of the forward's walk ("walk", "tokens" or None)
    return {f"chunk_{variant}_fwd": fwd, f"chunk_{variant}_bwd": bwd, "kept": kept}


@pytest.mark.parametrize("variant", ["rla", "rdn", "rla_keep", "rdn_keep"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_triton_chunk_op_autograd_wiring(variant, compiled, monkeypatch):
    keep = variant.endswith("_keep")  # recompute_states=False: the forward's walk goes to the backward
    variant = variant.removesuffix("_keep")
    stand_ins = _torch_stand_ins(variant)
    asked = _spy_triton(monkeypatch, stand_ins)
    xs, init = inputs(B=1, T=23, N=3)
    cu = torch.tensor([0, 7, 8, 23])
    leaves = [x.clone().requires_grad_() for x in xs] + [init[0].clone().requires_grad_()]
    kw = {"recompute_states": False} if keep else {}

    def loss(*ts, backend):
        o, (S, R) = OPS[variant](*ts[:6], initial_state=(ts[6], None), output_final_state=True, cu_seqlens=cu,
                                 backend=backend, use_qk_l2norm_in_kernel=True, **kw)
        return (o.square().sum() + (S * R).sum(),)

    fn = torch.compile(loss, fullgraph=True) if compiled else loss
    got = torch.autograd.grad(fn(*leaves, backend="triton")[0], leaves)
    ref = torch.autograd.grad(loss(*leaves, backend="naive")[0], leaves)
    assert f"chunk_{variant}_fwd" in asked and f"chunk_{variant}_bwd" in asked
    assert stand_ins["kept"] == ["walk" if keep else "tokens"]
    for x, r in zip(got, ref):
        assert rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", ["rla", "rdn", "rla_keep", "rdn_keep"])
def test_unused_outputs_reach_the_backward_as_none(variant, monkeypatch):
    """Autograd hands the chunk backward None, not zeros, for what the loss did not use: the saved tensors (no
    cotangent is filled for them: U, W, X or a whole walk's chunk states) and unused final states (the kernels then
    skip their reads). A loss of the final states alone gets a zero do. Gradients as the naive backend's."""
    keep = variant.endswith("_keep")
    variant = variant.removesuffix("_keep")
    stand_ins = _torch_stand_ins(variant)
    handed = []
    bwd = stand_ins[f"chunk_{variant}_bwd"]

    def spy(*args, **kw):
        do, dS_T, dR_T = args[12:15]
        handed.append((dS_T is None, dR_T is None, bool(do.abs().sum() == 0)))
        return bwd(*args, **kw)

    stand_ins[f"chunk_{variant}_bwd"] = spy
    _spy_triton(monkeypatch, stand_ins)
    xs, init = inputs(B=2, T=9)
    leaves = [x.clone().requires_grad_() for x in xs]
    for uses, expected in ((("o",), (True, True, False)), (("S",), (False, True, True)),
                           (("o", "R"), (True, False, False))):
        def loss(*ts, backend):
            o, (S, R) = OPS[variant](*ts, output_final_state=True, backend=backend,
                                     recompute_states=not keep)
            parts = {"o": o.square().sum(), "S": S.sin().sum(), "R": R.cos().sum()}
            return sum(parts[u] for u in uses)

        handed.clear()
        got = torch.autograd.grad(loss(*leaves, backend="triton"), leaves)
        ref = torch.autograd.grad(loss(*leaves, backend="naive"), leaves, allow_unused=True)  # q: not in S, R
        assert handed == [expected], uses
        for x, r in zip(got, ref):
            if r is None:
                assert not x.any(), uses
            else:
                assert rel(x, r) < 1e-4, uses


@pytest.mark.parametrize("variant", OPS)
def test_triton_chunk_ops_pass_opcheck(variant, monkeypatch):
    _spy_triton(monkeypatch, _torch_stand_ins(variant))
    xs, init = inputs(T=9)
    xs = [x.requires_grad_() for x in xs]
    packed = [x[:1] for x in xs]
    cu = torch.tensor([0, 4, 9])
    for keep in (library.KEEP_NOTHING, library.KEEP_TOKENS, library.KEEP_WALK):
        for args in ((variant, *xs, *init, None, 0.25, 1.0, "clip", keep),
                     (variant, *xs, None, None, None, 0.25, 1.0, "clip", keep),
                     (variant, *packed, init[0][:2], None, cu, 0.25, 1.0, "clip", keep)):
            torch.library.opcheck(library.ops.chunk_fwd.default, args)


@pytest.mark.parametrize("variant", OPS)
def test_recompute_states_is_an_api_argument_that_only_the_triton_training_path_reads(variant, monkeypatch):
    """Both ops take recompute_states (default True); with autograd the chunk op keeps the walk's per-token tensors
    (keep_tokens), or the whole walk (keep_walk) with recompute_states=False, and nothing without; the torch and
    naive backends ignore it (same numbers); a variant outside _KEEPS_WALK is refused at the op, and so is a keep
    outside 0, 1, 2."""
    import inspect

    assert inspect.signature(OPS[variant]).parameters["recompute_states"].default is True
    xs, init = inputs(T=5)
    for backend in ("torch", "naive"):
        assert torch.equal(OPS[variant](*xs, backend=backend, recompute_states=False)[0],
                           OPS[variant](*xs, backend=backend)[0])
    asked = []

    def lookup(v, module, name):
        fn = triton_function(v, module, name)

        def call(*args, **kw):
            asked.append("walk" if kw.get("keep_walk") else "tokens" if kw.get("keep_tokens") else None)
            return fn(*args, **kw)

        return call

    monkeypatch.setattr(library, "triton_function", lookup)
    OPS[variant](*xs, backend="triton", recompute_states=False)  # no autograd: nothing to keep
    OPS[variant](*[x.requires_grad_() for x in xs], backend="triton")
    OPS[variant](*xs, backend="triton", recompute_states=False)
    assert asked == [None, "tokens", "walk"]
    with pytest.raises(ValueError, match="keep must be 0 .nothing., 1 .* or 2 .the whole walk.; got 3"):
        library.ops.chunk_fwd(variant, *xs, None, None, None, 0.25, 1.0, "clip", 3)
    monkeypatch.setattr(library, "_KEEPS_WALK", library._KEEPS_WALK - {variant})
    with pytest.raises(ValueError, match=f"not {variant}'s"):
        library.ops.chunk_fwd(variant, *xs, None, None, None, 0.25, 1.0, "clip", library.KEEP_WALK)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "varlen"])
def test_rdn_saved_shapes_match_the_kernels(packed):
    """library._SAVED's RDN shapes (the fake's, written without importing triton) are what chunk_rdn_fwd saves:
    the chunk matrices, with keep_tokens the walk's U, W and X, with keep_walk its chunk states (a bound on packed
    chunks) too."""
    from rla_kernels.rdn import chunk

    B, cu = (1, torch.tensor([0, 3, 40, 41, 77], dtype=torch.int32)) if packed else (2, None)
    xs, init = inputs(B=B, T=77 if packed else 37, H=2, V=8, dtype=torch.bfloat16, N=4 if packed else B)
    out = chunk.chunk_rdn_fwd(*xs, None, 1.0, "clip", init[0], None, cu, save_wy=True, keep_walk=True)
    specs = library._SAVED["rdn"](xs[0], xs[2], cu, library.KEEP_WALK)
    saved = [out[3], *out[4]]
    assert [(tuple(t.shape), t.dtype) for t in saved] == specs
    assert specs[0][0] == chunk.wy_shape(xs[0]) and library._RDN_CHUNK == chunk.CHUNK_SIZE
    assert [s for s, _ in specs[1:]] == list(chunk.kept_walk_shapes(xs[0], 8, cu))
    tokens = chunk.chunk_rdn_fwd(*xs, None, 1.0, "clip", init[0], None, cu, save_wy=True, keep_tokens=True)
    assert [(tuple(t.shape), t.dtype) for t in [tokens[3], *tokens[4]]] == specs[:1] + specs[3:]
    assert library._SAVED["rdn"](xs[0], xs[2], cu, library.KEEP_TOKENS) == specs[:1] + specs[3:]
    assert library._SAVED["rdn"](xs[0], xs[2], cu, library.KEEP_NOTHING) == specs[:1]
    assert len(specs) == library.N_SAVED  # the op's fixed count of saved outputs is RDN's kept walk's


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "varlen"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rla_saved_shapes_match_the_kernels(packed, dtype):
    """library._SAVED's RLA shapes (the fake's, written without importing triton) are what chunk_rla_fwd keeps:
    the residuals r and the chunks' q.k products with keep_tokens (the default with autograd); with keep_walk the
    chunk states h_S, h_R (a bound on packed chunks) before them, all in q's dtype but the products (the dots':
    fp32 under the interpreter)."""
    from rla_kernels.rla import chunk

    B, cu = (1, torch.tensor([0, 3, 40, 41, 150], dtype=torch.int32)) if packed else (2, None)
    xs, init = inputs(B=B, T=150 if packed else 70, H=2, V=8, dtype=dtype, N=4 if packed else B)
    out = chunk.chunk_rla_fwd(*xs, None, 1.0, "clip", init[0], None, cu, keep_walk=True)
    specs = library._SAVED["rla"](xs[0], xs[2], cu, library.KEEP_WALK)
    assert [(tuple(t.shape), t.dtype) for t in out[3]] == specs and len(out) == 4
    assert library._RLA_CHUNK == chunk.CHUNK_SIZE
    assert [s for s, _ in specs] == list(chunk.kept_walk_shapes(xs[0], 8, cu))
    assert [d for _, d in specs] == [dtype] * 3 + [torch.float32]
    assert specs[3][0] == (*xs[0].shape[:3], chunk.CHUNK_SIZE)
    if packed:  # 1 + 1 + 1 + 2 chunks, and rows for the bound ceil(150 / 64) + 3 = 6
        assert specs[0][0][0] == 6
    tokens = chunk.chunk_rla_fwd(*xs, None, 1.0, "clip", init[0], None, cu, keep_tokens=True)
    assert len(tokens) == 4 and len(tokens[3]) == 2
    assert all(torch.equal(a, b) for a, b in zip(tokens[3], out[3][2:]))
    assert library._SAVED["rla"](xs[0], xs[2], cu, library.KEEP_TOKENS) == specs[2:]
    assert specs[2] == (tuple(xs[2].shape), dtype)
    assert library._SAVED["rla"](xs[0], xs[2], cu, library.KEEP_NOTHING) == []
    assert len(chunk.chunk_rla_fwd(*xs, None, 1.0, "clip", init[0], None, cu)) == 3


@pytest.mark.parametrize("grad", [True, False])
def test_rla_recompute_states_false_keeps_the_walk_only_for_a_backward(grad, monkeypatch):
    """The real kernels through the API: with recompute_states=False the state walks and the residual kernel run
    once (in the forward) and the gradients equal the default path's and the oracle's; without autograd nothing is
    kept (the forward as by default)."""
    import sys

    from rla_kernels.rla.chunk import chunk_rla_fwd

    chunk = sys.modules[chunk_rla_fwd.__module__]
    xs, init = inputs(B=1, T=150, H=2, K=16, V=16, N=3)
    cu = torch.tensor([0, 7, 8, 150])
    leaves = [x.clone().requires_grad_(grad) for x in xs] + [s.clone().requires_grad_(grad) for s in init]

    def run(ts, **kw):
        # without autograd and with initial states these short sequences would decode (fused recurrent)
        o, (S, R) = rla(*ts[:6], initial_state=tuple(ts[6:]) if grad else None, output_final_state=True,
                        cu_seqlens=cu, **kw)
        return (o * torch.linspace(-1, 1, 16, dtype=o.dtype)).sum() + S.sum() + R.square().sum()

    ref = run(leaves, backend="triton")
    ref_grads = torch.autograd.grad(ref, leaves) if grad else None
    launches = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel"))
    got = run(leaves, backend="triton", recompute_states=False)
    assert got.item() == ref.item()  # the same kernels: the same numbers
    forward = ["_state_walk_kernel", "_rla_residual_kernel", "_state_walk_kernel"]
    assert launches == forward
    if not grad:
        return
    grads = torch.autograd.grad(got, leaves)
    assert launches == forward  # the backward reran neither walk nor the residuals
    f64 = [x.detach().double().requires_grad_() for x in leaves]
    oracle = torch.autograd.grad(run(f64, backend="naive"), f64)
    for x, r, o in zip(grads, ref_grads, oracle):
        assert torch.equal(x, r)
        assert rel(x, o) < 1e-4


@pytest.mark.parametrize("grad", [True, False])
def test_rdn_recompute_states_false_keeps_the_walk_only_for_a_backward(grad, monkeypatch):
    """The real kernels through the API: with recompute_states=False the walk kernel runs once (in the forward,
    storing U, W and X) and the gradients equal the default path's and the oracle's; without autograd nothing is
    kept (the forward as by default)."""
    import sys

    from rla_kernels.rdn.chunk import chunk_rdn_fwd

    chunk = sys.modules[chunk_rdn_fwd.__module__]
    xs, init = inputs(B=1, T=45, H=2, K=16, V=16, N=3)
    cu = torch.tensor([0, 7, 8, 45])
    leaves = [x.clone().requires_grad_(grad) for x in xs] + [s.clone().requires_grad_(grad) for s in init]

    def run(ts, **kw):
        # without autograd and with initial states these short sequences would decode (fused recurrent)
        o, (S, R) = rdn(*ts[:6], initial_state=tuple(ts[6:]) if grad else None, output_final_state=True,
                        cu_seqlens=cu, **kw)
        return (o * torch.linspace(-1, 1, 16, dtype=o.dtype)).sum() + S.sum() + R.square().sum()

    ref = run(leaves, backend="triton")
    ref_grads = torch.autograd.grad(ref, leaves) if grad else None
    launches = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS, walk_stores)
    got = run(leaves, backend="triton", recompute_states=False)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    if not grad:
        assert launches == [False]
        return
    assert launches == [True]
    grads = torch.autograd.grad(got, leaves)
    assert launches == [True]  # the backward reran no walk
    f64 = [x.detach().double().requires_grad_() for x in leaves]
    oracle = torch.autograd.grad(run(f64, backend="naive"), f64)
    for x, r, o in zip(grads, ref_grads, oracle):
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)
        assert rel(x, o) < 1e-4


@pytest.mark.parametrize("variant", OPS)
def test_triton_chunk_kernel_matches_oracle_with_gradients(variant, monkeypatch):
    # The real Triton chunk kernel through the API (interpreter on the CPU machine: tiny shapes).
    asked = _spy_triton(monkeypatch)
    xs, init = inputs(B=1, T=20, H=1, K=16, V=16)
    leaves = [x.clone().requires_grad_() for x in xs] + [s.clone().requires_grad_() for s in init]
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]

    def loss(ts, backend):
        o, (S, R) = OPS[variant](*ts[:6], initial_state=tuple(ts[6:]), output_final_state=True, backend=backend)
        return (o * torch.linspace(-1, 1, 16, dtype=o.dtype)).sum() + S.sum() + R.square().sum()

    got = torch.autograd.grad(loss(leaves, "triton"), leaves)
    ref = torch.autograd.grad(loss(ref_leaves, "naive"), ref_leaves)
    assert asked == [f"chunk_{variant}_fwd", f"chunk_{variant}_bwd"]
    for x, r in zip(got, ref):
        assert rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", OPS)
def test_triton_chained_calls_equal_one_call_with_gradients_through_the_state(variant, monkeypatch):
    """A prefill in two pieces on the Triton chunk path, the first piece's final (S, R) the second's initial state,
    gives one call's outputs, final states and every gradient (inputs, initial states), the gradient crossing the
    carried state; against the float64 oracle's single call too."""
    asked = _spy_triton(monkeypatch)
    xs, init = inputs(B=1, T=37, H=1, K=16, V=16)
    leaves = [x.clone().requires_grad_() for x in xs] + [s.clone().requires_grad_() for s in init]
    weight = torch.linspace(-1, 1, 37 * 16).reshape(1, 37, 1, 16)

    def one_call(ts, backend):
        o, (S, R) = OPS[variant](*ts[:6], initial_state=tuple(ts[6:]), output_final_state=True, backend=backend)
        return o, S, R

    def two_calls(ts, split=21):
        first, (S, R) = OPS[variant](*(x[:, :split] for x in ts[:6]), initial_state=tuple(ts[6:]),
                                     output_final_state=True, backend="triton")
        second, (S, R) = OPS[variant](*(x[:, split:] for x in ts[:6]), initial_state=(S, R),
                                      output_final_state=True, backend="triton")
        return torch.cat([first, second], 1), S, R

    def grads(outs, ts):
        o, S, R = outs
        return torch.autograd.grad((o * weight.to(o.dtype)).sum() + S.sum() + R.square().sum(), ts)

    chained, whole = two_calls(leaves), one_call(leaves, "triton")
    assert asked.count(f"chunk_{variant}_fwd") == 3
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    ref = one_call(ref_leaves, "naive")
    for x, y, r in zip(chained, whole, ref):
        assert rel(x, y) < 1e-5 and rel(x, r) < 1e-5
    for x, y, r in zip(grads(chained, leaves), grads(whole, leaves), grads(ref, ref_leaves)):
        assert rel(x, y) < 1e-5 and rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("decode", [False, True], ids=["chunk", "decode"])
def test_triton_reads_a_strided_cu_seqlens_as_its_values(variant, decode, monkeypatch):
    """cu_seqlens as a strided view (every other element of a longer tensor): the kernels index it as a flat array,
    and read past its elements until the launchers made it contiguous (a crash or NaN states, 2026-12-05)."""
    asked = _spy_triton(monkeypatch)
    T = 3 if decode else 40  # decode: a few tokens a sequence (backend.DECODE_MAX_TOKENS), chunk: more
    xs, init = inputs(B=1, T=T, H=1, K=16, V=16, N=2)
    dense = torch.tensor([0, 1 if decode else 18, T], dtype=torch.int32)
    strided = torch.tensor([0, 99, int(dense[1]), 99, T], dtype=torch.int32)[::2]
    assert not strided.is_contiguous() and torch.equal(strided, dense)
    with torch.no_grad():
        outs = [OPS[variant](*xs, initial_state=init, output_final_state=True, cu_seqlens=cu, backend="triton")
                for cu in (strided, dense)]
    assert asked[0].startswith("fused_recurrent" if decode else "chunk")
    (o, (S, R)), (o_ref, (S_ref, R_ref)) = outs
    assert torch.equal(o, o_ref) and torch.equal(S, S_ref) and torch.equal(R, R_ref)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("op", ["rla", "rdn"])
def test_calls_read_no_values_from_the_device(op, packed, monkeypatch):
    """A batch's forward and backward, dense or packed, at every way the API runs them (the backward rerunning the walk, taking
    the forward's per-token tensors, taking its kept walk), size every buffer and launch from shapes alone: all of it
    runs on the meta device, where reading a value (a device sync on a GPU: .item(), int(), a size taken from
    cu_seqlens) fails. Kernel launches are stubbed out. The packed tables' sync cost RDN's packed forward 0.85 ms of
    wall time at B=16 T=2k (triton_utils.chunk_tables)."""
    chunk = importlib.import_module(f"rla_kernels.{op}.chunk")
    stub_launches(monkeypatch, chunk, [name for name in dir(chunk) if name.endswith("_kernel")])
    monkeypatch.setattr(chunk, "sm_count", lambda device: 132)
    fwd, bwd = getattr(chunk, f"chunk_{op}_fwd"), getattr(chunk, f"chunk_{op}_bwd")
    xs, (S0, R0) = inputs(B=1, T=230, N=5) if packed else inputs(B=5, T=46)
    xs, S0, R0 = [x.to("meta") for x in xs], S0.to("meta"), R0.to("meta")
    cu = torch.tensor([0, 5, 75, 112, 141, 230], dtype=torch.int32, device="meta") if packed else None
    do = torch.empty_like(xs[2])
    save = {"save_wy": True} if op == "rdn" else {}
    for keep in ("", "keep_tokens", "keep_walk"):
        out = fwd(*xs, None, 1.0, "clip", S0, R0, cu, **({keep: True} if keep else {}), **save)
        kept = {"walk": out[-1]} if keep else {}
        grads = bwd(*xs, None, 1.0, "clip", S0, R0, cu, do, None, None, **kept, **({"wy": out[3]} if save else {}))
        assert out[0].shape == xs[2].shape and out[1].shape == (5, 2, 16, 16), keep
        assert [g.shape for g in grads] == [x.shape for x in xs] + [S0.shape, R0.shape], keep


@pytest.mark.gpu
@pytest.mark.parametrize("variant", OPS)
def test_cuda_default_is_triton_and_compiles_fullgraph(variant, monkeypatch):
    # On the GPU machine: the default backend is the Triton chunk kernel, compiled without graph breaks,
    # forward and backward equal to the float64 oracle; decode goes to the fused recurrent kernel.
    monkeypatch.delenv(ENV_VAR, raising=False)
    asked = _spy_triton(monkeypatch)
    xs, init = inputs(B=2, T=200, H=4, K=128, V=128, dtype=torch.bfloat16)
    leaves = [x.cuda().requires_grad_() for x in xs] + [s.cuda().requires_grad_() for s in init]
    ref_leaves = [x.detach().cpu().double().requires_grad_() for x in leaves]

    def loss(*ts, backend=None):
        o, (S, R) = OPS[variant](*ts[:6], initial_state=tuple(ts[6:]), output_final_state=True, backend=backend,
                                 use_qk_l2norm_in_kernel=True)
        return (o.float() * torch.linspace(-1, 1, o.shape[-1], device=o.device)).sum() + S.sum() + R.square().sum()

    got = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*leaves), leaves)
    ref = torch.autograd.grad(loss(*ref_leaves, backend="naive"), ref_leaves)
    assert asked[:2] == [f"chunk_{variant}_fwd", f"chunk_{variant}_bwd"]
    for x, r in zip(got, ref):
        assert rel(x.cpu(), r) < 1e-2
    with torch.no_grad():
        o, _ = OPS[variant](*[x[:, :1] for x in leaves[:6]], initial_state=tuple(leaves[6:]))
        o_ref, _ = OPS[variant](*[x[:, :1] for x in ref_leaves[:6]], initial_state=tuple(ref_leaves[6:]),
                                backend="naive")
    assert asked[-1] == f"fused_recurrent_{variant}_fwd"
    assert rel(o.cpu(), o_ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("variant", OPS)
def test_cuda_gradients_repeat_bit_for_bit(variant):
    # Training runs must reproduce: the same inputs give the same gradients, bit for bit, at a shape of many chunk
    # programs. RDN's gradient kernel at two pipeline stages did not (dk and dg, H200, Triton 3.6, 2026-12-04).
    xs, init = inputs(B=16, T=1024, H=16, K=128, V=128, dtype=torch.bfloat16)
    leaves = [x.cuda().requires_grad_() for x in (*xs, *init)]
    do = torch.randn_like(leaves[2])

    def grads():
        # normalised q, k as the layers pass them: RDN's delta rule with raw randn keys (|k|^2 ~ 128) overflows to
        # NaN, and NaN is never equal to itself (the first GPU run of this test, 2026-12-04, failed that way)
        o, _ = OPS[variant](*leaves[:6], initial_state=tuple(leaves[6:]), backend="triton",
                            use_qk_l2norm_in_kernel=True)
        return torch.autograd.grad(o, leaves, do)

    first = grads()
    assert all(g.isfinite().all() for g in first)
    for _ in range(2):
        again = grads()
        differ = [i for i, (a, b) in enumerate(zip(first, again)) if not torch.equal(a, b)]
        assert not differ, f"gradients of inputs {differ} (q k v g beta gamma S0 R0) changed between runs"


def test_op_names_follow_the_wiring_source(tmp_path):
    """torch's compile caches key a custom op by name: an edited library.py must register under a new namespace,
    or a graph cached with the old wiring would call the new ops with old arguments (library.py docstring)."""
    import importlib.util
    from pathlib import Path

    edited = tmp_path / "library_edited.py"
    edited.write_text(Path(library.__file__).read_text() + "\n# an edit\n")
    spec = importlib.util.spec_from_file_location("rla_kernels.library_edited", edited)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NAMESPACE != library.NAMESPACE and module.NAMESPACE.startswith("rla_kernels_")
    assert module.ops.chunk_fwd.default is not library.ops.chunk_fwd.default
    assert library.ops.chunk_fwd.default.name() == f"{library.NAMESPACE}::chunk_fwd"

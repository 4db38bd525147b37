"""Where does RDN's 64-token backward go wrong for half inputs? One GPU call, ~2-4 min cold:

    . scripts/gpu_env.sh && RLA_KERNELS_FIXED_CONFIG=1 python3 docs/next/rdn-bwd64-half-hunt.py

(on this machine: TRITON_INTERPRET=1 .venv/bin/python docs/next/rdn-bwd64-half-hunt.py, a smoke run whose half dots
run in fp32 and so show nothing). The float64 check of 2026-12-08 (BENCHMARKS.md, entry "2026-12-08 00:47-01:46")
failed at 64-token chunks for bf16 only, on dS's side (dk, dv, dg, dbeta, dS0; dq, dgamma, dR0 passed), with an
illegal memory access in the one-launch reverse walks at K=64. This runs the backward's stages at 64 one by one and
compares each with a reference that does not share the suspect:

- the walks' chunk operators (Kb, Kc; Pb, Qb, Pc: _walk_operators) at 64 from bf16 inputs against the same from the
  inputs cast to fp32 (rounding only: expect <= ~5e-3);
- the reverse walks at 64 (two launches, and one launch: TRAILED_WALKS 1 and 2) against the walks at 32 (main's, which
  pass the float64 check): the per-token adjoints dyr, dX, dyv and the start adjoints dS0, dR0 are the same at any
  chunking (expect ~1e-2 at most from bf16 rounding); h_ds, h_dr at a 64-token chunk's end against the 32-token rows of
  the same token.

A stage far above its bound names the kernel to read first; if every stage passes, the fault is downstream, in the
chunk-parallel gradient kernels at 64 (_rdn_bwd_mats_kernel, _rdn_bwd_grad_kernel) or the rebuild. Each case runs in
its own try: a fault is printed and the CUDA context is then lost for the rest, so the cases go from the safest (fp32,
two launches) to the one that faulted.
"""
import os
import sys
import traceback

import torch

sys.path.insert(0, "tests")
from kerneltools import make_inputs  # noqa: E402
from rla_kernels.rdn.chunk import chunk_rdn_fwd  # noqa: E402

chunk = sys.modules[chunk_rdn_fwd.__module__]
DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"


# The suspect (2026-12-08 02:05, read, not measured): at 64-token chunks a walk's [BT, K] x [K, BV] dots have 64
# rows, so for half operands Triton emits wgmma there (at 32 rows, and at BV = 16 rows in the transposed walks,
# mma.sync; fp32 inputs use no tensor cores at all), pipelined at REVERSE_WALK_STAGES 2. What failed fits: dR's walk
# (transposed when trailed: no wgmma) right, dS's (untransposed) wrong, and the fault at K=64 with DR_WALK_T 0 too.
# So the walks go first transposed (no wgmma), then unpipelined, then as main runs them; the last faulted.
VARIANTS = [
    (2, dict(DS_WALK_T=2, DR_WALK_T=2)),
    (1, dict(DS_WALK_T=2, DR_WALK_T=2)),
    (2, dict(REVERSE_WALK_STAGES=1)),
    (1, {}),
    (2, {}),
]


def rel(x, ref):
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("nan")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def operators(inputs, S0, R0, BT):
    q, k, v, g, beta, gamma = inputs
    L = chunk._Layout(q, k, v, g, beta, gamma, 1.0, "clip", S0, R0, None, BT)
    return chunk._walk_operators(L, q, k, g, *chunk._wy(L, k, g, beta, gamma))


def walks(inputs, S0, R0, x, do, dS_T, dR_T, BT, trailed):
    q, k, v, g, beta, gamma = inputs
    L = chunk._Layout(q, k, v, g, beta, gamma, 1.0, "clip", S0, R0, None, BT)
    ops = chunk._walk_operators(L, q, k, g, *chunk._wy(L, k, g, beta, gamma))
    h_ds, h_dr = L.chunk_states(q), L.chunk_states(q)
    dS0, dR0 = L.state(q), L.state(q)
    dyr, dxc, dyv = (L.tokens(q) for _ in range(3))
    chunk._reverse_walk(L, q, k, *chunk.walk_gates(g, beta, gamma), ops, x, do, dS_T, dR_T, h_ds, h_dr, dS0, dR0,
                        dyr, dxc, dyv, L.K ** -0.5, chunk._reverse_walk_grid(L), trailed)
    B, T, H, K, V = L.B, L.T, L.H, L.K, L.V
    nt = -(-T // BT)
    ends = dict(h_ds=h_ds.view(B, nt, H, K, V), h_dr=h_dr.view(B, nt, H, K, V))
    return dict(dyr=dyr, dX=dxc, dyv=dyv, dS0=dS0, dR0=dR0, **ends)


def case(K, dtype, T=300):
    torch.manual_seed(K)
    inputs, S0, R0 = make_inputs(B=2, T=T, H=4, K=K, V=K, dtype=dtype, device=DEVICE)
    *_, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, keep_tokens=True)
    x = tokens[2]
    do = torch.randn_like(inputs[2])
    dS_T, dR_T = torch.randn_like(S0), torch.randn_like(R0)
    name = f"K={K} {str(dtype)[6:]}"

    half = operators(inputs, S0, R0, 64)
    full = operators([t.float() for t in inputs], S0, R0, 64)
    row = " ".join(f"{n} {rel(a, b):.1e}" for n, a, b in zip(("Kb", "Kc", "Pb", "Qb", "Pc"), half, full))
    print(f"{name} operators at 64 vs fp32 inputs: {row}", flush=True)

    ref = walks(inputs, S0, R0, x, do, dS_T, dR_T, 32, 1)
    for trailed, knobs in VARIANTS:
        saved = {n: getattr(chunk, n) for n in knobs}
        for n, value in knobs.items():
            setattr(chunk, n, value)
        label = f"TRAILED_WALKS {trailed}" + "".join(f" {n} {value}" for n, value in knobs.items())
        try:
            got = walks(inputs, S0, R0, x, do, dS_T, dR_T, 64, trailed)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 -- an illegal access: print where, then stop (the context is gone)
            traceback.print_exc(limit=-3)
            print(f"{name} walks at 64, {label}: FAULT", flush=True)
            return False
        finally:
            for n, value in saved.items():
                setattr(chunk, n, value)
        cells = [f"{n} {rel(got[n], ref[n]):.1e}" for n in ("dyr", "dX", "dyv", "dS0", "dR0")]
        # the 64-token chunk c ends where the 32-token chunk 2c + 1 does
        for n in ("h_ds", "h_dr"):
            a, b = got[n], ref[n][:, 1::2]
            m = min(a.shape[1], b.shape[1])
            cells.append(f"{n} {rel(a[:, :m], b[:, :m]):.1e}")
        print(f"{name} walks at 64 vs 32, {label}: {' '.join(cells)}", flush=True)
    return True


if __name__ == "__main__":
    cases = [(128, torch.float32), (128, torch.bfloat16), (64, torch.bfloat16)]
    if DEVICE == "cpu":  # smoke: tiny, the interpreter is slow
        cases = [(32, torch.bfloat16)]
    for K, dtype in cases:
        if not case(K, dtype, T=300 if DEVICE == "cuda" else 100):
            break

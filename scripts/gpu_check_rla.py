#!/usr/bin/env python3
"""GPU check of the Triton RLA chunk kernels against the float64 naive loop: prints a table, exits 1 on
any failure.

    python scripts/gpu_check_rla.py                 # correctness table, fixed launch config (~1 min)
    python scripts/gpu_check_rla.py --keep          # only the keep rows (--no-keep: none of them)
    python scripts/gpu_check_rla.py --all-configs   # + every autotune config at two shapes
    python scripts/gpu_check_rla.py --bench         # + autotuned timings at B=4, T=8192, H=16, D=128
    python scripts/gpu_check_rla.py --set DQKG_BV=32   # an int launch knob of rla_kernels.rla.chunk first (repeatable)
    TRITON_INTERPRET=1 python scripts/gpu_check_rla.py --smoke [--gpu-dots]   # tiny shapes on the CPU

Relative error is ||x - ref|| / ||ref||, the reference being the naive loop in float64 (on the GPU) on the
same (rounded) inputs, with autograd for the gradients. Limits: 1e-3 for fp32, 1e-2 for bf16/fp16.
Each case runs twice: as the API runs by default (the forward keeps its residuals r, ``keep_tokens``, and the
backward reruns the two state walks over them) and, as ``keep`` rows, with the walk kept too (``keep_walk``, the
API's ``rla(recompute_states=False)``: the backward takes the forward's h_S, h_R and r). The same kernels run
either way, so a keep row compiles nothing new.
``--set NAME=INT`` (repeatable) sets a launch knob of rla_kernels.rla.chunk (its LAUNCH_KNOBS: DQKG_BV, DU_BV, ...;
WALK_STEPS) before any case: the check of a setting that profile_kernels.py --knob found faster; rows get it in their
name (their inputs are the default run's: the seed is the case's).
Works from the repository root with or without the package installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import time
import zlib
from pathlib import Path

# Each autotune config is its own compile: correctness runs use one config unless asked otherwise.
os.environ.setdefault("RLA_KERNELS_FIXED_CONFIG", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def import_kernels():
    try:
        import rla_kernels  # noqa: F401
    except ImportError:  # not installed: load the kernels/ folder under its import name
        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location("rla_kernels", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["rla_kernels"] = module
        spec.loader.exec_module(module)
    from rla_kernels import naive_recurrent_rla
    from rla_kernels.rla import chunk, chunk_bwd, chunk_fwd
    from rla_kernels.triton_utils import warps_stages_configs
    kernels = [chunk_fwd._state_walk_kernel, chunk_fwd._rla_residual_kernel, chunk_fwd._rla_fwd_output_kernel,
               chunk_bwd._dstate_walk_kernel, chunk_bwd._rla_bwd_du_kernel, chunk_bwd._rla_bwd_dv_kernel,
               chunk_bwd._rla_bwd_dqkg_kernel]
    return naive_recurrent_rla, chunk.chunk_rla_fwd, chunk.chunk_rla_bwd, kernels, warps_stages_configs


naive, chunk_fwd, chunk_bwd, KERNELS, all_configs = import_kernels()


def emulate_gpu_half_dots():
    """--smoke --gpu-dots: bf16/fp16 dots as the GPU makes them (half operands, fp32 products and sums) instead
    of the kernels' interpreter fallback (HALF_DOTS_IN_FP32: every half dot operand cast to fp32, so the
    kernels' roundings to the input dtype before a dot vanish on the CPU). Triton's interpreter multiplies bf16
    dot operands as raw uint16 bit patterns: its create_dot is patched to convert them to fp32 first, and its
    fp32 -> bf16 casts truncate: made to round to nearest even, as the GPU does (triton_utils)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp
    from rla_kernels import triton_utils
    from rla_kernels.rla import chunk

    orig = interp.InterpreterBuilder.create_dot

    def as_fp32(h):
        if h.dtype.scalar == tl.bfloat16:
            return interp._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return h.data.astype(np.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if tl.bfloat16 in (a.dtype.scalar, b.dtype.scalar):
            return interp.TensorHandle(np.matmul(as_fp32(a), as_fp32(b), dtype=d.data.dtype) + d.data, d.dtype.scalar)
        return orig(self, a, b, d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot
    triton_utils.interpreter_rounds_bf16_to_nearest()  # truncated, bf16 rows here were ~2-3x the GPU's
    chunk.HALF_DOTS_IN_FP32 = False
# --smoke runs the script's own code on the CPU (under TRITON_INTERPRET=1, tiny shapes) before spending GPU time.
SMOKE = "--smoke" in sys.argv
DEVICE = "cpu" if SMOKE else "cuda"  # also cpu for scripts/warm_kernels.py --record (real shapes, launches intercepted)
COLUMNS = ("o", "S_T", "R_T", "dq", "dk", "dv", "dg", "dbeta", "dgamma", "dS0", "dR0")


def make_inputs(B, T, H, K, V, N, dtype, states=True):
    q = F.normalize(torch.randn(B, T, H, K, device=DEVICE), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, device=DEVICE), dim=-1)
    v = 3.0 * torch.randn(B, T, H, V, device=DEVICE)
    g = F.logsigmoid(torch.randn(B, T, H, device=DEVICE) + 3.0)
    beta, gamma = torch.rand(B, T, H, device=DEVICE), torch.rand(B, T, H, device=DEVICE)
    S0 = 0.5 * torch.randn(N, H, K, V, device=DEVICE) if states else None
    R0 = 0.3 * torch.randn(N, H, K, V, device=DEVICE) if states else None
    return [x.to(dtype) for x in (q, k, v)] + [g, beta, gamma], S0, R0


def reference(inputs, S0, R0, clip, residual, cu, do, dS, dR):
    leaves = [x.double().requires_grad_() for x in inputs]
    states = [None if s is None else s.double().requires_grad_() for s in (S0, R0)]
    o, (S, R) = naive(*leaves, None, clip, residual, None if S0 is None else tuple(states), True, cu)
    ((o * do.double()).sum() + (S * dS.double()).sum() + (R * dR.double()).sum()).backward()
    grads = [x.grad for x in leaves] + [None if s is None else s.grad for s in states]
    return [o.detach(), S.detach(), R.detach()] + grads


def rel(x, ref):
    if x is None or ref is None:
        return float("nan") if (x is None) != (ref is None) else None
    return ((x.double() - ref).norm() / ref.norm()).item()


def run_case(name, B, T, H, K, dtype, clip, residual, lengths=None, states=True, keep=False, compare=True):
    """The case's errors, worst and pass; without ``compare``, only its kernel calls (None)."""
    torch.manual_seed(zlib.crc32((name + (" keep" if keep else "")).encode()))
    if SMOKE:
        T, K = min(T, 40), 16
        lengths = None if lengths is None else [n // 25 + 1 for n in lengths]
    cu = None
    if lengths is not None:
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=DEVICE)
        T = int(cu[-1])
    N = B if cu is None else len(lengths)
    inputs, S0, R0 = make_inputs(B, T, H, K, K, N, dtype, states)
    # as the API runs it (kernels/library.py): the backward takes the residuals, with keep (recompute_states=False)
    # the whole walk
    o, S_T, R_T, walk = chunk_fwd(*inputs, None, clip, residual, S0, R0, cu, keep_walk=keep, keep_tokens=True)
    do, dS, dR = torch.randn_like(o), torch.randn_like(S_T), torch.randn_like(R_T)
    grads = chunk_bwd(*inputs, None, clip, residual, S0, R0, cu, do, dS, dR, walk=walk)
    if not compare:
        return None
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    want = reference(inputs, S0, R0, clip, residual, cu, do, dS, dR)
    errs = [rel(x, r) for x, r in zip([o, S_T, R_T, *grads], want)]
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    real = [e for e in errs if e is not None]
    ok = all(e == e and e < tol for e in real)  # NaN never passes
    finite = all(bool(torch.isfinite(x).all()) for x in [o, S_T, R_T, *grads] if x is not None)
    return errs, max(real), ok and finite


def print_row(name, errs, worst, ok):
    cells = " ".join(f"{'-':>8}" if e is None else f"{e:8.1e}" for e in errs)
    print(f"{name:<34} {cells} {worst:8.1e}  {'ok' if ok else 'FAIL'}", flush=True)


CASES = [
    # name, B, T, H, K, dtype, clip, residual, varlen lengths, initial states
    ("fp32 K64 clip", 2, 1000, 4, 64, torch.float32, 1.0, "clip", None, True),
    ("bf16 K64 clip", 2, 1000, 4, 64, torch.bfloat16, 1.0, "clip", None, True),
    ("fp16 K64 tanh", 2, 1000, 4, 64, torch.float16, 0.7, "tanh", None, True),
    ("fp32 K128 tanh", 2, 1000, 4, 128, torch.float32, 0.7, "tanh", None, True),
    ("bf16 K128 clip", 2, 1000, 4, 128, torch.bfloat16, 1.0, "clip", None, True),
    ("bf16 K128 noclip T777 no-S0", 2, 777, 4, 128, torch.bfloat16, None, "clip", None, False),
    ("fp32 K64 varlen tanh", 1, 0, 4, 64, torch.float32, 0.5, "tanh", [300, 1, 699], True),
    ("bf16 K128 varlen clip", 1, 0, 4, 128, torch.bfloat16, 1.0, "clip", [64, 437, 5, 494], True),
    # enough (sequence, head) pairs for the state walks' 32-wide V-blocks (the cases above get 16-wide ones
    # on an H200), and K = 96: a partial K-block in the walks
    ("bf16 K128 B8H8 wide walks", 8, 520, 8, 128, torch.bfloat16, 1.0, "clip", None, True),
    ("fp32 K96 B8H8 wide walks", 8, 300, 8, 96, torch.float32, 0.7, "tanh", None, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-configs", action="store_true", help="check every autotune config at two shapes")
    ap.add_argument("--bench", action="store_true", help="autotuned timings at B=4, T=8192, H=16, D=128")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (set TRITON_INTERPRET=1)")
    ap.add_argument("--gpu-dots", action="store_true",
                    help="with --smoke: half dots as the GPU makes them (see emulate_gpu_half_dots)")
    ap.add_argument("--case", default="", help="only the cases whose name contains this text")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="set an int launch knob of rla_kernels.rla.chunk first, e.g. DQKG_BV=32 (repeatable)")
    keep = ap.add_mutually_exclusive_group()
    keep.add_argument("--keep", action="store_true", help="only the keep rows (the walk kept, recompute_states=False)")
    keep.add_argument("--no-keep", action="store_true", help="no keep rows")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU and torch sees none (run it on the GPU machine, or --smoke under TRITON_INTERPRET=1)")
    keeps = [True] if args.keep else [False] if args.no_keep else [False, True]
    if args.gpu_dots:
        if not args.smoke:
            ap.error("--gpu-dots only applies to --smoke")
        emulate_gpu_half_dots()
    cases = [c for c in CASES if args.case in c[0]]
    if args.set:
        # gpu_check_rdn's --set and the parser profile_kernels' --knob uses (imported here only: it has side effects,
        # FIXED_CONFIG among them, that this script's own defaults already match)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_check_rdn import set_knobs

        from rla_kernels.rla import chunk
        set_knobs([chunk], args.set)
    tag = "".join(" " + given for given in args.set)  # in each row's name; the seed stays the case's (same inputs)
    import triton
    where = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"device {where}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'case':<34} " + " ".join(f"{c:>8}" for c in COLUMNS) + f" {'worst':>8}  status")
    t0 = time.time()
    failed = 0
    for name, B, T, H, K, dtype, clip, residual, lengths, states in cases:
        for keep in keeps:
            errs, worst, ok = run_case(name, B, T, H, K, dtype, clip, residual, lengths, states, keep)
            print_row(name + (" keep" if keep else "") + tag, errs, worst, ok)
            failed += not ok
    rows = len(cases) * len(keeps)
    print(f"correctness: {rows - failed}/{rows} ok in {time.time() - t0:.0f} s (fixed config)")

    if args.all_configs:
        for cfg in all_configs():
            for kern in KERNELS:
                kern.configs = [cfg]
            label = f"warps={cfg.num_warps} stages={cfg.num_stages}"
            for name, B, T, H, K, dtype, clip, residual, lengths, states in (CASES[0], CASES[4]):
                errs, worst, ok = run_case(name, B, T, H, K, dtype, clip, residual, lengths, states)
                print_row(f"{name} {label}", errs, worst, ok)
                failed += not ok

    if args.bench:
        from triton.testing import do_bench
        for kern in KERNELS:
            kern.configs = all_configs()
        B, T, H, D = 4, 8192, 16, 128
        inputs, _, _ = make_inputs(B, T, H, D, D, B, torch.bfloat16, states=False)
        do = torch.randn_like(inputs[2])
        fwd = lambda: chunk_fwd(*inputs, None, 1.0, "clip", None, None, None)  # noqa: E731
        bwd = lambda: chunk_bwd(*inputs, None, 1.0, "clip", None, None, None, do, None, None)  # noqa: E731
        walk = chunk_fwd(*inputs, None, 1.0, "clip", None, None, None, keep_walk=True)[3]
        bwd_kept = lambda: chunk_bwd(*inputs, None, 1.0, "clip", None, None, None, do, None, None,  # noqa: E731
                                     walk=walk)
        t1 = time.time()
        fwd(), bwd()  # autotune here, outside the timings
        torch.cuda.synchronize()
        tune_s = time.time() - t1
        ms_fwd, ms_bwd, ms_kept = do_bench(fwd), do_bench(bwd), do_bench(bwd_kept)
        print(f"bench bf16 B={B} T={T} H={H} D={D}: fwd {ms_fwd:.2f} ms, bwd (recomputes fwd states) "
              f"{ms_bwd:.2f} ms, fwd+bwd {ms_fwd + ms_bwd:.2f} ms (autotune took {tune_s:.0f} s); bwd with the "
              f"walk kept {ms_kept:.2f} ms (the forward is the same either way)")
        for kern in KERNELS:
            best = getattr(kern, "best_config", None)
            print(f"  {kern.fn.__name__}: {best}")
    print(f"total {time.time() - t0:.0f} s; {'ALL OK' if not failed else f'{failed} FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

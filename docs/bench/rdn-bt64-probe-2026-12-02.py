"""RDN with both passes at 64-token chunks, today's kernels unchanged (only chunk.BWD_CHUNK_SIZE lifted to 64, and at
64 once more with one pipelining stage in the walks): GPU ms per kernel and each pass's wall time against the default
32, and how far the gradients land from 32's; then fla's own walks at 32 and 64.

The open question it settles (chunk.py, BWD_CHUNK_SIZE's comment: "The kernels of today were not tried at 64"): do
today's walks, which cost 3-4x fla's per state, in part for their 32-token steps (docs/next/rdn-fwd-split-walks.md),
gain at 64 as they are, or only once they are fla-shaped (docs/next/rdn-walks-plan.md, W5)? Written 2026-12-02 16:55
on the CPU machine (no device time left that session). ptxas sm_90 (this machine's Triton 3.9, kernel_resources.py's
launches made at 64): at two stages the forward walk takes 255 registers, 1.2 KB of spills and 120 KB of shared memory,
the reverse walks 208 / 227 registers and 152 / 197 KB (one program an SM; at 32: two); at one stage 66 / 49 / 74 KB
(two programs an SM, 255 registers, the forward's spills unchanged); the rebuild 118 registers / 74 KB; the gradient
kernel 255 registers with 120-1900 B of spills. Expected, written before any measurement: slower at two stages, +0.3
to +0.8 ms fwd+bwd at B=16 T=2k (the walks' [BT, BT] dots grow 4x a chunk at half the chunks, one walk program an SM;
the old rerun was 3.71 ms at 64 against 2.93 at 32 on 2026-11-30); at one stage within +-0.3 of 32. If 64 is faster
anywhere, it is the first thing to try in the walks plan.

GPU machine: `. scripts/gpu_env.sh && RLA_KERNELS_FIXED_CONFIG=1 python3 docs/bench/rdn-bt64-probe-2026-12-02.py
16,2048,16,128 1,32768,16,128` (~2-3 min; B,T,H,D, bf16, V = D).

Run on the H200 2026-12-02 19:07 (BENCHMARKS.md, entry "2026-12-02 19:07-19:39"): 64 is much slower in the forward
(the walk 1.60 -> 4.46 ms at B=16 T=2k, 3.65 at one stage), the backward at one stage hit an illegal memory access
before the gradients were compared; fla's walks (run again alone, 19:09) gain at 64 at 32k (1.7x) but not at 2k.

On a CPU (under TRITON_INTERPRET=1, tiny shapes such as 1,100,2,32) it checks only that every setting runs and agrees
with 32. fla's walks are timed on a GPU only.
"""
import os
import sys

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from profile_kernels import entry_points, profile  # noqa: E402

cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
fwd, bwd = entry_points("rdn")
chunk = sys.modules[fwd.__module__]


def passes(x, do, c):
    """The forward as training runs it (keep_tokens, its chunk matrices kept) and the backward handed its output, both
    at c-token chunks."""
    def forward():
        return fwd(*x, None, 1.0, "clip", keep_tokens=True, save_wy=True, chunk_size=c)
    out = forward()
    saved = {"walk": out[-1], "wy": out[3]}

    def backward():
        return bwd(*x, None, 1.0, "clip", None, None, None, do, None, None, chunk_size=c, **saved)
    return forward, backward


# (chunk size, launch knobs of chunk.py for that run): 32 is main; at 64 the walks' two pipelining stages take 120 KB
# (forward) and 152 / 197 KB (reverse) of shared memory, one program an SM; at one stage 66 / 49 / 74 KB (ptxas sm_90).
SETTINGS = [(32, {}), (64, {}), (64, {"WALK_STAGES": 1, "REVERSE_WALK_STAGES": 1})]


def fla_walks(B, T, H, D):
    """fla's own walks (fwd_h, bwd_dhu of its gated delta rule) at 32- and 64-token chunks, do_bench median ms: how
    much of our walks' cost over fla's the chunk size alone explains (fla runs them at 64)."""
    try:
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
        from fla.ops.utils import chunk_local_cumsum
    except ImportError as err:
        print(f"fla walks: not measured ({err})", flush=True)
        return
    q, k, w = (F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16() for _ in range(3))
    u, do, dv = (torch.randn(B, T, H, D, device=dev).bfloat16() for _ in range(3))
    g0 = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3.0)
    for c in (32, 64):
        g = chunk_local_cumsum(g0, chunk_size=c, scale=1.4426950408889634)  # log2 decays, as fla 0.6.0 passes them
        for name, fn in (("fwd_h", lambda: chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=g, chunk_size=c)),
                         ("bwd_dhu", lambda: chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=w, do=do, dv=dv, g=g,
                                                                            scale=D ** -0.5, chunk_size=c))):
            try:
                ms = f"{triton.testing.do_bench(fn, warmup=20, rep=200):.3f} ms"
            except Exception as err:  # noqa: BLE001 -- one line and on: chunk 32 may not be a size fla accepts
                ms = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            print(f"fla B={B} T={T} H={H} D={D} {name} chunk {c}: {ms}", flush=True)


for shape in sys.argv[1:]:
    B, T, H, D = (int(s) for s in shape.split(","))
    torch.manual_seed(0)  # gpu_check_rdn's inputs (its make_inputs is CUDA-only): unit q, k, values that clip
    q, k = (F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1) for _ in range(2))
    v = 3.0 * torch.randn(B, T, H, D, device=dev)
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3.0)
    beta, gamma = torch.rand(B, T, H, device=dev), torch.rand(B, T, H, device=dev)
    x = [t.to(torch.bfloat16) for t in (q, k, v, g, beta, gamma)]
    do = torch.randn_like(x[2])
    grads = {}
    for c, knobs in SETTINGS:
        tag = f"chunk {c}" + "".join(f", {name} {value}" for name, value in knobs.items())
        before = {name: getattr(chunk, name) for name in ("BWD_CHUNK_SIZE", *knobs)}
        for name, value in {"BWD_CHUNK_SIZE": c, **knobs}.items():
            setattr(chunk, name, value)
        try:
            forward, backward = passes(x, do, c)
            grads[tag] = backward()
            for name, fn in (("fwd", forward), ("bwd", backward)) if cuda else ():
                times = profile(fn)
                wall = triton.testing.do_bench(fn, warmup=50, rep=300)
                print(f"rdn B={B} T={T} H={H} D={D} {tag} {name}: {sum(times.values()):.3f} ms GPU, {wall:.3f} ms "
                      "wall", flush=True)
                for kernel, ms in times.most_common(10):
                    print(f"    {ms:8.3f} ms  {kernel}", flush=True)
        finally:
            for name, value in before.items():
                setattr(chunk, name, value)
    names = ("dq", "dk", "dv", "dg", "dbeta", "dgamma")
    first, *others = grads
    for tag in others:
        diffs = {n: ((a.double() - b.double()).norm() / b.double().norm()).item()
                 for n, a, b in zip(names, grads[tag], grads[first])}
        print(f"rdn B={B} T={T} gradients at {tag} against {first} (relative): "
              + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()), flush=True)
        assert all(d < 5e-2 for d in diffs.values()), diffs
    if cuda:
        fla_walks(B, T, H, D)

"""Backward wall time (do_bench median, ms) at each (OVERLAP, TRAILED_WALKS) of RDN's and RLA's chunk modules, keep_tokens path.

The one-off script behind BENCHMARKS.md's entry "2026-12-02 11:17-12:34" (H200): run on the GPU machine as
`. scripts/gpu_env.sh && python3 docs/bench/overlap-time-2026-12-02.py rdn,rla 1,32768 2,16384 16,2048` (H=16,
K=V=128, bf16, autotuned). At 12:12 OVERLAP took 0, 1 (the rebuild queued first) and 2 (after the walks), which
became 0 and 1 at 12:22; scripts/profile_kernels.py --wall --knob OVERLAP=0,1 --knob TRAILED_WALKS=1,2 measures the
same since (on its own inputs).
"""
import sys
import torch
import torch.nn.functional as F
from triton.testing import do_bench
from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd
from rla_kernels.rla.chunk import chunk_rla_bwd, chunk_rla_fwd

ops = sys.argv[1].split(",")
shapes = [tuple(int(x) for x in s.split(",")) for s in sys.argv[2:]]
torch.manual_seed(0)
for B, T in shapes:
    H, K = 16, 128
    q = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).bfloat16()
    k = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).bfloat16()
    v = (3 * torch.randn(B, T, H, K, device="cuda")).bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 3.0)
    beta, gamma = torch.rand(B, T, H, device="cuda"), torch.rand(B, T, H, device="cuda")
    for op in ops:
        if op == "rdn":
            gb, bb, cb = g.bfloat16(), beta.bfloat16(), gamma.bfloat16()
            o, S, R, wy, tok = chunk_rdn_fwd(q, k, v, gb, bb, cb, None, 1.0, "clip", save_wy=True, keep_tokens=True)
            do = torch.randn_like(o)
            run = lambda: chunk_rdn_bwd(q, k, v, gb, bb, cb, None, 1.0, "clip", None, None, None, do, None, None,
                                        wy=wy, walk=tok)
            mod = sys.modules[chunk_rdn_fwd.__module__]
        else:
            o, S, R, tok = chunk_rla_fwd(q, k, v, g, beta, gamma, None, 1.0, "clip", keep_tokens=True)
            do = torch.randn_like(o)
            run = lambda: chunk_rla_bwd(q, k, v, g, beta, gamma, None, 1.0, "clip", None, None, None, do, None, None,
                                        walk=tok)
            mod = sys.modules[chunk_rla_fwd.__module__]
        ref = None
        row = []
        configs = [(0, 1), (1, 1), (0, 2), (1, 2), (0, 1), (1, 1), (0, 2), (1, 2)] if op == "rdn" else [(0,), (1,), (0,), (1,)]
        for config in configs:
            mod.OVERLAP = config[0]
            if op == "rdn":
                mod.TRAILED_WALKS = config[1]
            out = run()
            torch.cuda.synchronize()
            if ref is None:
                ref = out
            same = all((a is None and b is None) or torch.equal(a, b) for a, b in zip(out, ref))
            ms = do_bench(run, warmup=50, rep=300)
            row.append(f"{config}:{ms:.3f}{'' if same else '(DIFF)'}")
        mod.OVERLAP = 1
        mod.TRAILED_WALKS = 0
        print(f"{op} B={B} T={T} bwd ms  " + "  ".join(row), flush=True)

"""fwd+bwd through the API with autograd filling zero cotangents for unused outputs (before) and not (after).

The one-off script behind BENCHMARKS.md's entry "2026-12-02 13:59-14:27" (H200): run on the GPU machine as
`. scripts/gpu_env.sh && RLA_KERNELS_FIXED_CONFIG=1 python3 docs/bench/materialize-ab-2026-12-02.py 16,2048,16,128
rdn,rla` (B,T,H,D; bf16). "before" re-registers the chunk op's autograd with materialised grads, as main had until
35fd79b; each setting twice.
"""
import sys
import torch, torch.nn.functional as F
from triton.testing import do_bench
from rla_kernels import api
import rla_kernels.library as lib

dev = "cuda" if torch.cuda.is_available() else "cpu"
B, T, H, D = [int(x) for x in sys.argv[1].split(",")]
torch.manual_seed(0)
q = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16().requires_grad_()
k = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16().requires_grad_()
v = torch.randn(B, T, H, D, device=dev).bfloat16().requires_grad_()
g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3).requires_grad_()
beta = torch.rand(B, T, H, device=dev).requires_grad_()
gamma = torch.rand(B, T, H, device=dev).requires_grad_()
do = torch.randn(B, T, H, D, device=dev).bfloat16()
leaves = [q, k, v, g, beta, gamma]


def materialising(ctx, inputs, output):
    lib._setup_context(ctx, inputs, output)
    ctx.set_materialize_grads(True)


for op in sys.argv[2].split(","):
    for keep in (True, False):
        row = []
        for name, setup in (("before", materialising), ("after", lib._setup_context)) * 2:
            lib.chunk_fwd.register_autograd(lib._autograd_through(lib.chunk_bwd), setup_context=setup)

            def step():
                o = getattr(api, op)(q, k, v, g, beta, gamma, recompute_states=keep)[0]
                o.backward(do)
            step()
            ms = do_bench(step, warmup=20, rep=200, grad_to_none=leaves) if dev == "cuda" else 0.0
            row.append(f"{name} {ms:.3f}")
        print(f"{op} B={B} T={T} recompute_states={keep}: fwd+bwd ms  " + "  ".join(row), flush=True)

"""Where RDN's reverse walks (chunk_bwd._walk_r, _walk_s) spend their time against fla's bwd_dhu: standalone copies of
the two walks whose per-step features switch off one at a time (constexprs), each timed alone (do_bench median), at
32- and 64-wide V-blocks, and fla's bwd_dhu at 32- and 64-token chunks. Timing only: the ablated variants compute
wrong values (each is the real walk's code with one piece left out).

GPU machine (~3 min, most of it compiling ~40 variants): `. scripts/gpu_env.sh && python3 docs/next/rdn-walk-anatomy.py
16,2048,16,128 1,32768,16,128 2>&1 | tee $OUT/anatomy.txt` (B,T,H,D; bf16, V = D). On a CPU under TRITON_INTERPRET=1
(tiny shapes, e.g. 1,64,2,32) every variant runs once, untimed.

Run 2026-12-02 19:19 on the H200 with dR's walk only, 32 wide (BENCHMARKS.md, entry "2026-12-02 19:07-19:39"): main
0.97 / 2.97 ms at B=16 T=2k / B=1 T=32k; the chain alone 0.32 / 1.36 (fla's bwd_dhu 0.43 / 2.28); the dyr and dX
stores 0.23 / 0.76 of it, X's load 0.16 / 0.57, the Pc dot 0.13 / 0.36, the q^T dot 0.10 / 0.30, the h_dr store 0.07 /
0.05; 64 wide 0.62 / 3.31. That run led to the 64-wide reverse walks (chunk.REVERSE_WALK_BV), where dS's walk gained
far less than dR's (0.93 -> 0.89 ms against 0.96 -> 0.64 in the backward at 2k): ptxas (sm_90, this machine's Triton
3.9) gives dS's walk 255 registers and 336 bytes of stack a thread at 64 wide (250 and none at 32), dR's 255 and 136
(211 and none). What this run is for: which of dS's per-step pieces costs what at 64 wide, i.e. what to take off its
walk (the ideas in docs/next/README.md).

Expected, written 2026-12-02 19:55 before any run of the dS half: at 64 wide on B=16 T=2k, dS's walk alone ~0.8-0.9
ms (as in the backward), its chain alone ~0.35; the Pb and Qb dots and the dX load together ~0.25, dyv's store ~0.1.
"""
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing

from rla_kernels.rdn._triton_helpers import dot_cast, load_tile, load_tile_raw, store_tile
from rla_kernels.rdn.chunk_bwd import _rdn_bwd_walk_r_kernel, _rdn_bwd_walk_s_kernel, _rho_grad
from rla_kernels.rdn.chunk_fwd import chunk_decays, load_gate
from rla_kernels.rla.fused_recurrent import _rho

FLAGS = ("NO_X", "NO_PC", "NO_QDOT", "NO_HSTORE", "NO_TOKSTORE", "PC_HALF", "NO_QB", "NO_DX")


@triton.jit
def walk_coords(T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):
    """A walk program's opening for fixed-length sequences (the walks' seq_bounds without cu_seqlens): its V-block,
    (sequence, head), head, first token, first chunk-state row, chunk count, and the offsets of its [., K], [., V] and
    [., BT] token rows. Shared with rdn-fwd-walk-anatomy.py."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_h = i_nh % H
    bos = (i_nh // H) * T
    boh = (i_nh // H) * tl.cdiv(T, BT)
    return (i_v, i_nh, i_h, bos, boh, tl.cdiv(T, BT), (bos * H + i_h) * K, (bos * H + i_h) * V,
            (bos * H + i_h) * BT)


def bench(fn, dev: str) -> float:
    """do_bench median ms of ``fn`` after one call (compile); on a CPU (the interpreter) the call alone, NaN."""
    fn()
    if dev == "cpu":
        return float("nan")
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=20, rep=150)


@triton.jit(do_not_specialize=["T"])
def walk_r_abl(q, k, g, gamma, k_c, p_c, x, do, h_dr, dr0, dyr_out, dx_out, scale, clip, T,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, NO_X: tl.constexpr, NO_PC: tl.constexpr, NO_QDOT: tl.constexpr,
               NO_HSTORE: tl.constexpr, NO_TOKSTORE: tl.constexpr, PC_HALF: tl.constexpr, NO_QB: tl.constexpr,
               NO_DX: tl.constexpr):
    """chunk_bwd._walk_r, fixed-length sequences, clip, no final-state adjoint (NO_QB, NO_DX: dS's flags, unused)."""
    i_v, i_nh, i_h, bos, boh, NT, tok_k, tok_v, tok_t = walk_coords(T, H, K, V, BT)
    b_dr = tl.zeros([BK, BV], dtype=tl.float32)
    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        if not NO_HSTORE:
            store_tile(h_dr + ((boh + i_t) * H + i_h) * K * V, b_dr, 0, K, V, i_v * BV, V, BK, BV)
        b_G, _, b_GL = chunk_decays(g, bos, T, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T, i_t, i_h, H, BT)
        b_kc = load_tile_raw(k_c + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
        b_do = load_tile(do + tok_v, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        b_drq = b_gamma[:, None] * (scale * b_do)
        b_dyr = dot_cast(b_kc, b_dr, "tf32")
        if not NO_PC:
            if PC_HALF:
                b_pc = load_tile_raw(p_c + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyr += tl.dot(b_pc, b_drq.to(b_pc.dtype))
            else:
                b_pc = load_tile(p_c + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyr += tl.dot(b_pc, b_drq, input_precision="tf32")
        b_eG = tl.exp(b_G)[:, None]
        b_dr = tl.exp(b_GL) * b_dr
        if not NO_QDOT:
            b_q = load_tile_raw(q + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
            b_dr += dot_cast(tl.trans(b_q), b_eG * b_drq, "tf32")
        b_k = load_tile_raw(k + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
        b_dr -= dot_cast(tl.trans(b_k), (b_gamma[:, None] * b_eG) * b_dyr, "tf32")
        if NO_X:
            b_dx = b_gamma[:, None] * b_dyr
        else:
            b_x = load_tile(x + tok_v, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
            b_dx = _rho_grad(b_x, _rho(b_x, clip, 1), clip, 1) * (b_gamma[:, None] * b_dyr)
        if not NO_TOKSTORE:
            store_tile(dyr_out + tok_v, b_dyr, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
            store_tile(dx_out + tok_v, b_dx, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
    store_tile(dr0 + i_nh * K * V, b_dr, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit(do_not_specialize=["T"])
def walk_s_abl(q, k, g, beta, k_b, p_b, q_b, dxc, do, h_ds, ds0, dyv_out, scale, T,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, NO_X: tl.constexpr, NO_PC: tl.constexpr, NO_QDOT: tl.constexpr,
               NO_HSTORE: tl.constexpr, NO_TOKSTORE: tl.constexpr, PC_HALF: tl.constexpr, NO_QB: tl.constexpr,
               NO_DX: tl.constexpr):
    """chunk_bwd._walk_s, fixed-length sequences, no final-state adjoint. NO_PC drops the Pb dot, NO_QB the Qb dot,
    PC_HALF makes both half dots, NO_DX reads no dX (dsq stands in for it); NO_X is dR's flag (unused)."""
    i_v, i_nh, i_h, bos, boh, NT, tok_k, tok_v, tok_t = walk_coords(T, H, K, V, BT)
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        if not NO_HSTORE:
            store_tile(h_ds + ((boh + i_t) * H + i_h) * K * V, b_ds, 0, K, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T, i_t, i_h, H, BT)
        b_kb = load_tile_raw(k_b + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
        b_dsq = scale * load_tile(do + tok_v, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        if NO_DX:
            b_dx = b_dsq
        else:
            b_dx = load_tile(dxc + tok_v, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        b_dyv = dot_cast(b_kb, b_ds, "tf32")
        if not NO_PC:
            if PC_HALF:
                b_pb = load_tile_raw(p_b + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyv += tl.dot(b_pb, b_dsq.to(b_pb.dtype))
            else:
                b_pb = load_tile(p_b + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyv += tl.dot(b_pb, b_dsq, input_precision="tf32")
        if not NO_QB:
            if PC_HALF:
                b_qb = load_tile_raw(q_b + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyv -= tl.dot(b_qb, b_dx.to(b_qb.dtype))
            else:
                b_qb = load_tile(q_b + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
                b_dyv -= tl.dot(b_qb, b_dx, input_precision="tf32")
        b_eG = tl.exp(b_G)[:, None]
        b_ds = tl.exp(b_GL) * b_ds
        if not NO_QDOT:
            b_q = load_tile_raw(q + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
            b_ds += dot_cast(tl.trans(b_q), b_eG * b_dsq, "tf32")
        b_k = load_tile_raw(k + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
        b_ds -= dot_cast(tl.trans(b_k), tl.exp(b_Gp)[:, None] * b_dx + (b_beta[:, None] * b_eG) * b_dyv, "tf32")
        if not NO_TOKSTORE:
            store_tile(dyv_out + tok_v, b_dyv, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
    store_tile(ds0 + i_nh * K * V, b_ds, 0, K, V, i_v * BV, V, BK, BV)


CASES = [("copy", {}), ("chain alone", {f: True for f in ("NO_X", "NO_PC", "NO_QDOT", "NO_HSTORE", "NO_TOKSTORE",
                                                            "NO_QB", "NO_DX")}),
         ("no X load (dR)", {"NO_X": True}), ("no Pc / Pb dot", {"NO_PC": True}), ("no Qb dot (dS)", {"NO_QB": True}),
         ("small dots as half", {"PC_HALF": True}), ("no dX load (dS)", {"NO_DX": True}),
         ("no q^T dot", {"NO_QDOT": True}), ("no state store", {"NO_HSTORE": True}),
         ("no token stores", {"NO_TOKSTORE": True})]
CONFIGS = [("", {}), ("8 warps", {"num_warps": 8}), ("3 stages", {"num_stages": 3})]


def main(shape: str):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, T, H, D = (int(s) for s in shape.split(","))
    BT = 32
    torch.manual_seed(0)
    q, k, kc, kb = (F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16() for _ in range(4))
    pc, pb, qb = (0.1 * torch.randn(B, T, H, BT, device=dev) for _ in range(3))
    pch, pbh, qbh = (t.bfloat16() for t in (pc, pb, qb))
    x = 3 * torch.randn(B, T, H, D, device=dev)
    do, dxc = (torch.randn(B, T, H, D, device=dev).bfloat16() for _ in range(2))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3.0)
    gamma, beta = torch.rand(B, T, H, device=dev), torch.rand(B, T, H, device=dev)
    h = torch.empty(B * triton.cdiv(T, BT), H, D, D, device=dev, dtype=torch.bfloat16)
    d0 = torch.empty(B, H, D, D, device=dev)
    out1, out2 = torch.empty_like(do), torch.empty_like(do)

    def launch(walk, BV, flags, config):
        f = {name: False for name in FLAGS}
        f.update(flags)
        half = f["PC_HALF"]
        common = dict(H=H, K=D, V=D, BT=BT, BK=D, BV=BV, **f, num_warps=config.get("num_warps", 4),
                      num_stages=config.get("num_stages", 2))
        grid = (triton.cdiv(D, BV), B * H)
        if walk == "dR":
            return lambda: walk_r_abl[grid](q, k, g, gamma, kc, pch if half else pc, x, do, h, d0, out1, out2, 0.1,
                                            1.0, T, **common)
        return lambda: walk_s_abl[grid](q, k, g, beta, kb, pbh if half else pb, qbh if half else qb, dxc, do, h,
                                        d0, out1, 0.1, T, **common)

    def main_walk(walk, BV):
        grid = (triton.cdiv(D, BV), B * H)
        if walk == "dR":
            return lambda: _rdn_bwd_walk_r_kernel[grid](
                q, k, g, gamma, kc, pc, x, do, None, h, d0, out1, out2, None, None, 0.1, 1.0, T,
                H=H, K=D, V=D, BT=BT, BK=D, BV=BV, RESIDUAL=1, DOT_PREC="tf32", HAS_DRT=False, IS_VARLEN=False,
                TRANSPOSED=False, num_warps=4, num_stages=2)
        return lambda: _rdn_bwd_walk_s_kernel[grid](
            q, k, g, beta, kb, pb, qb, dxc, do, None, h, d0, out1, None, None, 0.1, T,
            H=H, K=D, V=D, BT=BT, BK=D, BV=BV, DOT_PREC="tf32", HAS_DST=False, IS_VARLEN=False,
            TRANSPOSED=False, num_warps=4, num_stages=2)

    print(f"B={B} T={T} H={H} D={D}, 32-token chunks, {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'} "
          "bf16; each walk alone, do_bench median ms", flush=True)
    for walk in ("dR", "dS"):
        for BV in (32, 64):
            print(f"  {walk} walk, {BV} wide: main's kernel {bench(main_walk(walk, BV), dev):.3f}", flush=True)
            main_walk(walk, BV)()
            want = (d0.clone(), h.clone(), out1.clone())
            launch(walk, BV, {}, {})()
            # the copy must be main's walk: same start adjoint, chunk adjoints and token adjoints
            same = all(torch.equal(a, b) for a, b in zip(want, (d0, h, out1)))
            print(f"    copy gives main's values: {same}", flush=True)  # must be True (under the interpreter too)
            for name, flags in CASES:
                if (walk == "dR" and name.endswith("(dS)")) or (walk == "dS" and name.endswith("(dR)")):
                    continue
                for cname, config in CONFIGS if name == "copy" else CONFIGS[:1]:
                    tag = f"{name}{', ' + cname if cname else ''}"
                    try:
                        print(f"    {tag:28s} {bench(launch(walk, BV, flags, config), dev):.3f}", flush=True)
                    except Exception as err:  # noqa: BLE001 -- one line and on (shared memory, a compile error)
                        print(f"    {tag:28s} failed: {type(err).__name__}: {str(err).splitlines()[0][:100]}",
                              flush=True)
    if dev == "cpu":
        return
    try:
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu
        from fla.ops.utils import chunk_local_cumsum
    except ImportError as err:
        print(f"  fla bwd_dhu: not measured ({err})", flush=True)
        return
    dv = torch.randn_like(do)
    for c in (32, 64):
        gc = chunk_local_cumsum(g, chunk_size=c, scale=1.4426950408889634)  # log2 decays, as fla 0.6.0 passes them
        ms = bench(lambda: chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=kc, do=do, dv=dv, g=gc, scale=0.1,
                                                          chunk_size=c), dev)
        print(f"  fla bwd_dhu, {c}-token chunks: {ms:.3f}", flush=True)


if __name__ == "__main__":
    for given in sys.argv[1:]:
        main(given)

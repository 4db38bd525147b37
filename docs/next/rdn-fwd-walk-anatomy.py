"""Where RDN's forward walk (chunk_fwd._rdn_walk_kernel as the forward with autograd runs it: X stored, its S path at
~fp32) spends its time: a standalone copy whose per-step pieces switch off one at a time (constexprs), each timed
alone (do_bench median), at the launch config main uses and a few others, beside fla's fwd_h at 32- and 64-token
chunks. Timing only: the ablated variants compute wrong values (each is the real walk's code with one piece left out
or made cheaper).

GPU machine (~3 min, most of it compiling ~20 variants): `. scripts/gpu_env.sh && python3
docs/next/rdn-fwd-walk-anatomy.py 16,2048,16,128 1,32768,16,128 2>&1 | tee $OUT/fwd-anatomy.txt` (B,T,H,D; bf16,
V = D). On a CPU under TRITON_INTERPRET=1 (tiny shapes, e.g. 1,64,2,32) every variant runs once, untimed, and the
copy is checked against main's kernel. Written for main as of 2026-12-02 20:45 (X stored fp32) and run on it at
22:05 (results: BENCHMARKS.md, entry "2026-12-02 21:59-23:55"); main stores X in the input dtype since (NUDGE_X): the
copy needs the same store (and an x buffer in bf16) to match main again.

Why: the forward walk is the largest kernel left (1.60 ms of RDN's 6.77 fwd+bwd at B=16 T=2k H=16 K=V=128 bf16, 3.34
of 11.38 at B=1 T=32k; H200, 2026-12-02), against fla's fwd_h at 0.31 ms a state at 32-token chunks. Its chain a step
runs k.S (a split dot: two half dots), T_beta's dot and Mk's (three half dots each, "half3"), T_gamma's (tf32), then
both state updates (S's split); it stores h_s, h_r, U, W and X. The reverse walks' anatomy (rdn-walk-anatomy.py) found
their chain as fast as fla's and the per-step extras twice the chain; whether the forward walk's cost is its chain
(the precise X) or its extras decides between the walks plan's W3/W4 (fla-shaped walks) and cheaper extras.

Expected, written 2026-12-02 20:40 before any run: at B=16 T=2k, the copy ~1.6 ms; the stores together ~0.3; X's
small dots at tf32 instead of half3 ~-0.2 (the 2026-12-02 07:35 measurement: half3 1.60 against tf32x3 1.84, and a
tf32 X 1.42 on 2026-12-01); S's dots cast instead of split ~-0.15; no R path ~-0.4; 16 wide ~1.9.
"""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from rla_kernels.rdn._triton_helpers import dot_at, dot_cast, load_tile, load_tile_raw, store_tile
from rla_kernels.rdn.chunk import chunk_rdn_fwd
from rla_kernels.rdn.chunk_fwd import chunk_decays, load_gate
from rla_kernels.rla.fused_recurrent import _rho
from rla_kernels.triton_utils import dot_split

chunk = sys.modules[chunk_rdn_fwd.__module__]  # the module, not the package's same-named attribute
# the reverse walks' probe beside this file: its programs' opening and its timer
_spec = importlib.util.spec_from_file_location(
    "rdn_walk_anatomy", os.path.join(os.path.dirname(os.path.abspath(__file__)), "rdn-walk-anatomy.py"))
_anatomy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_anatomy)
walk_coords, bench = _anatomy.walk_coords, _anatomy.bench
FLAGS = ("NO_HSTORE", "NO_UWSTORE", "NO_XSTORE", "CAST_S", "TF32_X", "NO_R", "NO_MK")


@triton.jit(do_not_specialize=["T"])
def walk_abl(k, v, g, beta, gamma, t_beta, t_gamma, m_k, h_s, h_r, u_out, w_out, x_out, s_out, r_out, clip, T,
             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
             BV: tl.constexpr, NO_HSTORE: tl.constexpr, NO_UWSTORE: tl.constexpr, NO_XSTORE: tl.constexpr,
             CAST_S: tl.constexpr, TF32_X: tl.constexpr, NO_R: tl.constexpr, NO_MK: tl.constexpr):
    """_rdn_walk_kernel at STORE_X, RAW_K, SPLIT_S, U_PREC = X_PREC = "half3", the clip, fixed-length sequences, no
    initial states. CAST_S: S's dots round S (dot_cast) instead of splitting it; TF32_X: T_beta's and Mk's dots at
    tf32; NO_R: no R path (k.R, W, R's update); NO_MK: X without Mk U."""
    i_v, i_nh, i_h, bos, boh, NT, tok_k, tok_v, tok_t = walk_coords(T, H, K, V, BT)
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        h_off = ((boh + i_t) * H + i_h) * K * V
        if not NO_HSTORE:
            store_tile(h_s + h_off, b_s, 0, K, V, i_v * BV, V, BK, BV)
            if not NO_R:
                store_tile(h_r + h_off, b_r, 0, K, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T, i_t, i_h, H, BT)
        b_k = load_tile_raw(k + tok_k, i_t * BT, T, H * K, 0, K, BT, BK)
        b_tb = load_tile(t_beta + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
        b_tc = load_tile(t_gamma + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
        b_mk = load_tile(m_k + tok_t, i_t * BT, T, H * BT, 0, BT, BT, BT)
        b_eG = tl.exp(b_G)[:, None]
        if CAST_S:
            b_ks = dot_cast(b_k, b_s, "tf32")
        else:
            b_ks = dot_split(b_k, b_s, "tf32")
        b_kr = dot_cast(b_k, b_r, "tf32")
        b_v = load_tile(v + tok_v, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        if TF32_X:
            b_u = tl.dot(b_tb, b_beta[:, None] * (b_v - b_eG * b_ks), input_precision="tf32")
        else:
            b_u = dot_at(b_tb, b_beta[:, None] * (b_v - b_eG * b_ks), "half3", k.dtype.element_ty)
        if NO_MK:
            b_x = b_v - tl.exp(b_Gp)[:, None] * b_ks
        elif TF32_X:
            b_x = b_v - (tl.exp(b_Gp)[:, None] * b_ks + tl.dot(b_mk, b_u, input_precision="tf32"))
        else:
            b_x = b_v - (tl.exp(b_Gp)[:, None] * b_ks + dot_at(b_mk, b_u, "half3", k.dtype.element_ty))
        if not NO_R:
            b_w = tl.dot(b_tc, b_gamma[:, None] * (_rho(b_x, clip, 1) - b_eG * b_kr), input_precision="tf32")
        if not NO_UWSTORE:
            store_tile(u_out + tok_v, b_u, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
            if not NO_R:
                store_tile(w_out + tok_v, b_w, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        if not NO_XSTORE:
            store_tile(x_out + tok_v, b_x, i_t * BT, T, H * V, i_v * BV, V, BT, BV)
        b_dL = tl.exp(b_GL - b_G)[:, None]
        if CAST_S:
            b_s = b_s * tl.exp(b_GL) + dot_cast(tl.trans(b_k), b_dL * b_u, "tf32")
        else:
            b_s = b_s * tl.exp(b_GL) + dot_split(tl.trans(b_k), b_dL * b_u, "tf32")
        if not NO_R:
            b_r = b_r * tl.exp(b_GL) + dot_cast(tl.trans(b_k), b_dL * b_w, "tf32")
    store_tile(s_out + i_nh * K * V, b_s, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(r_out + i_nh * K * V, b_r, 0, K, V, i_v * BV, V, BK, BV)


CASES = [("copy", {}), ("no h stores", {"NO_HSTORE": True}), ("no U, W stores", {"NO_UWSTORE": True}),
         ("no X store", {"NO_XSTORE": True}),
         ("no stores at all", {"NO_HSTORE": True, "NO_UWSTORE": True, "NO_XSTORE": True}),
         ("S's dots cast, not split", {"CAST_S": True}), ("T_beta, Mk dots at tf32", {"TF32_X": True}),
         ("no Mk dot", {"NO_MK": True}), ("no R path", {"NO_R": True}),
         ("S alone, cast, tf32, no stores", dict(NO_HSTORE=True, NO_UWSTORE=True, NO_XSTORE=True, CAST_S=True,
                                                 TF32_X=True, NO_R=True))]
CONFIGS = [("", {}), ("16 wide", {"BV": 16}), ("64 wide", {"BV": 64}), ("8 warps", {"num_warps": 8}),
           ("1 stage", {"num_stages": 1}), ("3 stages", {"num_stages": 3})]


def main(shape: str):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, T, H, D = (int(s) for s in shape.split(","))
    torch.manual_seed(0)  # gpu_check_rdn's inputs: unit q, k, values that clip
    k = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).bfloat16()
    v = (3.0 * torch.randn(B, T, H, D, device=dev)).bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3.0).bfloat16()
    beta, gamma = (torch.rand(B, T, H, device=dev).bfloat16() for _ in range(2))
    L = chunk._Layout(k, k, v, g, beta, gamma, 1.0, "clip", None, None, None, chunk.CHUNK_SIZE)
    t_beta, t_gamma, m_k = chunk._wy(L, k, g, beta, gamma)
    BT = L.BT
    h_s, h_r = (torch.empty(B * triton.cdiv(T, BT), H, D, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    u, w = torch.empty_like(v), torch.empty_like(v)
    x = torch.empty(B, T, H, D, device=dev)
    s_out, r_out = (torch.empty(B, H, D, D, device=dev) for _ in range(2))
    auto_bv = L.width("WALK_BV", L.walk_BV)

    def launch(flags, config):
        f = {name: False for name in FLAGS}
        f.update(flags)
        BV = config.get("BV", auto_bv)
        return lambda: walk_abl[(triton.cdiv(D, BV), B * H)](
            k, v, g, beta, gamma, t_beta, t_gamma, m_k, h_s, h_r, u, w, x, s_out, r_out, 1.0, T,
            H=H, K=D, V=D, BT=BT, BK=L.BK, BV=BV, **f, num_warps=config.get("num_warps", chunk.WALK_WARPS),
            num_stages=config.get("num_stages", chunk.WALK_STAGES))

    def main_walk():
        return chunk._walk(L, k, v, g, beta, gamma, t_beta, t_gamma, m_k, None, None, True)

    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    print(f"B={B} T={T} H={H} D={D}, {BT}-token chunks, {name} bf16; the forward walk alone (X stored, ~fp32 S path), "
          f"do_bench median ms; {auto_bv} wide, {chunk.WALK_WARPS} warps, {chunk.WALK_STAGES} stages unless named",
          flush=True)
    print(f"  main's walk (chunk._walk, its allocations included) {bench(main_walk, dev):.3f}", flush=True)
    want = main_walk()
    launch({}, {})()
    got = (h_s, h_r, u, w, x, s_out, r_out)
    same = all(torch.equal(a, b) for a, b in zip(want, got))
    print(f"  copy gives main's values: {same}", flush=True)  # must be True (under the interpreter too)
    for case, flags in CASES:
        for cname, config in CONFIGS if case == "copy" else CONFIGS[:1]:
            tag = f"{case}{', ' + cname if cname else ''}"
            try:
                print(f"    {tag:34s} {bench(launch(flags, config), dev):.3f}", flush=True)
            except Exception as err:  # noqa: BLE001 -- one line and on (shared memory, a compile error)
                print(f"    {tag:34s} failed: {type(err).__name__}: {str(err).splitlines()[0][:100]}", flush=True)
    if dev == "cpu":
        return
    try:
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
        from fla.ops.utils import chunk_local_cumsum
    except ImportError as err:
        print(f"  fla fwd_h: not measured ({err})", flush=True)
        return
    for c in (32, 64):
        gc = chunk_local_cumsum(g.float(), chunk_size=c, scale=1.4426950408889634)  # log2 decays, as fla 0.6.0
        ms = bench(lambda: chunk_gated_delta_rule_fwd_h(k=k, w=k, u=v, g=gc, chunk_size=c), dev)
        print(f"  fla fwd_h (one state), {c}-token chunks: {ms:.3f}", flush=True)


if __name__ == "__main__":
    for given in sys.argv[1:]:
        main(given)

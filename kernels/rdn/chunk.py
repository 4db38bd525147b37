"""Residual Delta Net, training/prefill path: Triton chunk kernels, forward and backward.

The two entry points the API layer wraps in an autograd function (states fp32 [N, H, K, V]; S0/R0 None
mean zeros, and then dS0/dR0 come back None):

    chunk_rdn_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, *, segments=None,
                  save_wy=False, keep_walk=False, keep_tokens=False)
        -> (o, S_T, R_T), then wy with save_wy, then walk with keep_walk (or its tokens with keep_tokens)
    chunk_rdn_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T, *, wy=None,
                  walk=None)
        -> (dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)

``wy`` [3, B, T, H, BT] fp32 is the forward's T_beta, T_gamma and Mk (wy.py), which the backward then does
not recompute; a backward without it (or with another chunk size's) recomputes them. ``walk`` (opt-in, memory
for time) is the forward walk's (h_s, h_r, U, W, X) (``kept_walk_shapes``), which the backward then does not rerun.

Semantics are exactly ``naive.py``. The work is split the way fla splits its gated delta rule, so that only
what links the chunks runs sequentially:

    forward:  wy.py (chunk-local matrices, chunk-parallel) -> chunk_fwd walk (states, sequential per
              (sequence, head, V-block)) -> chunk_fwd output (chunk-parallel); at small batch and long T
              the walk is cut along the sequence instead (segmented.py, ``segments=``)
    backward: (wy.py's matrices, without the forward's saved ones) -> the reverse walks' chunk operators
              (chunk_bwd, chunk-parallel) -> the forward walk again, storing U, W, X -> chunk_bwd reverse walk
              (state adjoints; dR's, then dS's) -> chunk_bwd gradients (chunk-parallel: the chunk matrices' per
              chunk, then per K-block)

The API's forward with autograd (``keep_tokens``) walks at the rerun's precision, stores X too, and hands the walk's
per-token tensors U, W, X (not its chunk states: [B, T, H, V] each against [K, V] a chunk) with the chunk matrices to
the backward, which rebuilds the chunk states from U and W with two linear walks in one launch (_rebuild_states, RLA's
walk: S1 = exp(GL) S0 + (K exp(GL - G))^T U) instead of rerunning the walk; a backward handed nothing reruns it. That
forward's precise walk costs 1.54 ms (X stored in the input dtype) against the default's 1.17, the rebuild 0.59 against
the rerun's 1.85 (B=16 T=2k H=16 K=V=128 bf16, H200, 2026-12-02; the precise walk 1.35 transposed, WALK_T; fwd+bwd 6.20
ms on 2026-12-03, BENCHMARKS.md). With
``keep_walk`` the forward also hands h_s, h_r to the backward: no walk at all (the rerun: 1.83 of the backward's 7.28 ms
at B=16 T=2k H=16 K=V=128 bf16, H200, 2026-12-01) for 2 x n_chunks x H x K x V + 3 x B x T x H x V input-dtype elements
kept from forward to backward (1.48 GB a layer at that shape; the per-token tensors alone 0.40 GB, 0.54 while X was
fp32).
"""
from __future__ import annotations

import functools

import torch

from .. import shapes, triton_utils
from ..rla.fused_recurrent import _RESIDUAL_CLIP, _RESIDUAL_IDENTITY, _RESIDUAL_TANH, _check_inputs
from ..triton_utils import GRID_AXIS_LIMIT, cdiv, chunk_tables, next_power_of_2, sm_count, walk_gates
from .chunk_bwd import (_rdn_bwd_dg_kernel, _rdn_bwd_grad_kernel, _rdn_bwd_mats_kernel, _rdn_bwd_prep_k_kernel,
                        _rdn_bwd_prep_p_kernel, _rdn_bwd_rebuild_kernel, _rdn_bwd_walk_r_kernel,
                        _rdn_bwd_walk_s_kernel, _rdn_bwd_walks_kernel)
from .chunk_fwd import _rdn_out_kernel, _rdn_walk_kernel, _rdn_walk_t_kernel
from .segmented import auto_segments, chunk_rdn_fwd_segmented, usable_segments
from .wy import _rdn_wy_kernel, _rdn_wy_widen_kernel

# The forward chunks by 32 tokens, as the backward, so that the backward reuses its T_beta, T_gamma and Mk (plan
# P4: the backward's _rdn_wy_kernel took 0.96 ms at B=16 T=2k H=16 K=V=128 bf16, H200, 2026-12-01, its Mqi alone is
# one q k^T dot a chunk). At 32 the forward walk takes the raw-k path (_walk, RAW_K), measured no slower than at 64
# (2.00 vs 2.08 ms with bf16 states, H200, 2026-11-30); the output kernel reads twice the chunk states.
CHUNK_SIZE = shapes.RDN_CHUNK_SIZE
# The backward chunks by 32 tokens whatever the forward did (BWD_CHUNK_SIZE's comment has the 64-token form). Its
# chunk-parallel kernels of 2026-11-30 (a single gradient kernel, then a dv kernel) did not fit sm_90's shared
# memory at 64-token chunks and K = 128; at 64 the rerun and the (then single) reverse walk spilled 1392 and 1320 bytes
# a thread against 416 and 600 at 32
# (scripts/kernel_resources.py, sm_90, 2026-11-30), and the rerun measured slower at 64 (3.71 vs 2.93 ms). With the
# kernels of 2026-12-07 (H100, autotuned, BWD_CHUNK_SIZE=32,64 fed the 32-token forward's tokens): B=1 T=32k backward
# wall 7.27 -> 7.44 ms, B=2 T=16k 5.63 -> 6.68; the reverse walks gain at 64 (3.46 -> 2.58 ms at 32k), the
# chunk-parallel kernels lose more (the 64-token WY 0.49, operators +0.20, gradient +0.17, chunk matrices +0.10).
# Fed a 64-token forward's chunk matrices instead (no WY recompute; H100, 2026-12-07 22:39, profile_kernels.py
# --saved-chunk 64): B=1 T=32k backward wall 7.26 -> 7.04, but that forward's walk takes 2.63 -> 6.01 ms
# (BENCHMARKS.md).
# The backward reruns the forward walk itself: the math is exact, the rounding is not (the rerun's X, whose sign
# against +-c is the clip's gradient mask, reads S through split dots and its chunk-matrix dots at tf32x3, ~fp32; the
# default forward's S dots round the state to the input dtype (dot_cast, 2^-9 for bf16) and its chunk-matrix dots are
# tf32, so its X, which only feeds o through the continuous rho, is within ~2^-9 of the rerun's; a forward called with
# chunk_size=64 also chunks differently, _walk says why): an element within rounding of the clip may be masked as the
# other side of the forward it belongs to. Not so with keep_walk: the forward's o and the backward's mask then come
# from one walk, one X.
# 32 (the default), 16 or 64: at most that many tokens a chunk, as the caller's chunk_size allows; 0 (automatic, not
# the default): 64 where the backward takes the forward's kept tokens (keep_tokens, the API's default with autograd)
# and its 32-token reverse walks would all fit on the GPU at once (trailed_walks: a long sequence at small batch, each
# walk one latency-bound program an SM, where half the steps pay), its 64-token chunk matrices widened from the
# forward's 32-token ones (wy.py, _rdn_wy_widen_kernel); else 32. Backward wall ms at B=1 T=32k H=16 K=V=128 bf16
# (H100, autotuned, profile_kernels.py --wall --tune): 7.27 at 32 -> 6.91 automatic (the widening 0.31; 2026-12-08
# 01:37), 6.62 fed a 64-token forward's matrices (walks 3.56 -> 2.49, rebuild 1.14 -> 0.88 at REBUILD_STEPS 1,
# gradient 1.53 -> 1.71, chunk matrices 0.74 -> 0.83, operators 0.41 -> 0.60; 00:47-00:51). Where the walks are two
# launches 64 lost: B=2 T=16k 5.67 -> 6.00; B=4 T=8k 5.05 and B=16 T=2k 5.07 at 64 (2k: 4.45 at 32 on 2026-12-07).
# **But the backward at 64 is wrong for half inputs on the GPU** (float64 check, H100, 2026-12-08 01:40-01:46,
# gpu_check_rdn.check at BWD_CHUNK_SIZE 0): bf16 K=128 dk / dv / dg 0.31-0.35 relative error, dS0 2.3; bf16 K=64 an
# illegal memory access in the one-launch reverse walks (_rdn_bwd_walks_kernel; two launches ran, unchecked); fp32 K=64
# and K=128 pass (5e-7), and the CPU tests (interpreted, half dots in fp32) pass at 64. So chunk_rdn_bwd refuses 64 for
# half inputs on a GPU unless HALF_BWD_64 is 1 (to find the bug: `gpu_check_rdn.py --set BWD_CHUNK_SIZE=0 --set
# HALF_BWD_64=1`), and the timings above are of a wrong backward: the bug must be found before 64 can be the default.
BWD_CHUNK_SIZE = 32
HALF_BWD_64 = 0
# 1: the walk's chunk-matrix dots up to X (T_beta's, making U, and Mk's, making X) run at tf32x3 when X is stored
# (the rerun, keep_walk's forward); 0: both at tf32, one pass instead of three on the S chain (walks plan W4b(1),
# docs/next/rdn-walks-plan.md); 2: T_beta's at tf32x3 (U feeds S's update, so S stays ~fp32), Mk's at tf32.
# Rerun walk at B=16 T=2k H=16 K=V=128 bf16 (H200, 2026-12-01 13:52-14:01, profile_kernels.py --knob X_TF32X3=1,0
# and 1,2): 1.83-1.85 ms at 1, 1.42 at 0, 1.66 at 2. Float64 check (gpu_check_rdn.py --all --case bf16 --set), dv at
# bf16 K=128 over two draws of inputs: 3.3e-3 at 1; 1.1e-2 and 1.2e-2 at 0 (fails the 1e-2 bound: tf32 X flips the
# clip's mask too often); 3.3e-3 to 8.9e-3 at 2 (passes, with little room). 1 stays: -0.17 ms is not worth the room.
X_TF32X3 = 1
# 1: those ~fp32 dots (X_TF32X3's) as three half dots of split operands instead of tf32x3 (_triton_helpers.dot_at,
# ~2^-16 relative: the precision of the walk's split state dots, which the clip's mask already relies on), for bf16
# inputs at 32-token chunks (raw k; fp16 keeps tf32x3: its lo part would underflow where bf16's does not). Expected
# before measuring: -0.1 to -0.3 ms. Measured (H=16 K=V=128 bf16, H200, Triton 3.6, 2026-12-02 07:35,
# profile_kernels.py --knob X_HALF3=0,1): the precise walk 1.84 -> 1.60 ms at B=16 T=2k, 3.50 -> 3.31 at B=1 T=32k;
# gpu_check_rdn.py --all --set X_HALF3=1: every case ok, bf16 <= 4.3e-3 (dv 3.3e-3, as at 0).
X_HALF3 = 1
# 1: where X is not stored (a forward without autograd: inference, whose X feeds o only through the continuous rho;
# with autograd the API's forward stores X at ~fp32 for the clip's mask, keep_tokens), the walk's three chunk-matrix
# dots (T_beta's U, Mk's X, T_gamma's W) take both operands rounded to the input dtype, one half dot each (dot_at
# "half"), as fla's walks take their w and u; 0: at tf32 (fp32 operands: the tensor cores at half rate, twice the
# k-steps on the chain). Half inputs only. Measured (H=16 K=V=128 bf16, H200, Triton 3.6, 2026-12-04 18:14,
# profile_kernels.py --infer): the inference walk 0.994 -> 0.898 ms at B=16 T=2k, 2.724 -> 2.577 at B=1 T=32k (T_beta
# and Mk alone: 0.918, 2.642). gpu_check_rdn.py --case bf16 at 1: o and the states as at 0 (bf16 o 2.8e-3 against
# float64). T_gamma's dot half in training's walk too (X stored) gained nothing: 1.285 -> 1.272 at 2k, 3.326 -> 3.355
# at 32k. The price: an inference o is no longer within one rounding step of training's forward (the same inputs give
# o apart by a few bf16 steps; test_inference_forward_rounds_its_chunk_matrices).
INFER_HALF = 1
# Warps of the walks (no autotuner: chunk_fwd.py says why). Stack (spill) bytes a thread by ptxas (sm_90, K = 128,
# bf16; scripts/kernel_resources.py) for the forward walk / its rerun in the backward / the reverse walk (the single
# one of 2026-11-30, since split in two: chunk_bwd.py has the split walks' numbers): 424 /
# 416 / 512 at four warps, 552 / 168 / 136 at eight (the reverse walk 600 at four since it stores dyr, dX,
# dyv; the forward walk 240 at four at 32-token chunks, against 440 at 64, 2026-12-01). Fewer spills did not
# make eight faster: at B=16 T=2k
# (H200, 2026-11-30, profile_kernels.py) the walks took 2.40 / 2.93 / 3.24 ms at four warps, 5.49 ms (reverse)
# at eight, 6.47 (reverse) at two; four runs two programs an SM, eight one. keep_walk's forward walk (U, W and X
# stored, S path at tf32x3) at four: 400 bytes, against 368 for the rerun and 240 for the default forward walk, all
# three by this CPU machine's Triton 3.9 ptxas (2026-12-01; untimed on the GPU). Eight again where a walk has one
# program an SM (H200, 2026-12-02 11:17, profile_kernels.py --knob WALK_WARPS=4,8), ms at B=1 T=32k / B=2 T=16k:
# forward walk (kept X) 3.33 -> 4.28 / 1.99 -> 4.29, dR walk 2.86 -> 2.75 / 1.52 -> 2.73, dS walk 2.45 -> 2.38 /
# 1.34 -> 2.30. Four stays.
WALK_WARPS = 4
# Software-pipelining stages of the forward walk (and its rerun in the backward): two. At B=16 T=2k H=16 K=V=128 bf16
# (H200, Triton 3.6, profile_kernels.py --walk-stages 1,2, 2026-12-01 10:30, the walk of then with split R dots) one
# stage took 1.92 ms forward / 2.43 rerun / 2.44 kept forward, two 1.73 / 2.16 / 2.16.
WALK_STAGES = 2
# 2: the transposed forward walk (WALK_T, 32-wide V-blocks: B*H*V/32 programs fill the GPU) loads k, v and the chunk
# matrices T_beta, T_gamma, Mk through TMA descriptors where the layout allows (_walk_descriptors;
# chunk_fwd._rdn_walk_t_kernel's docstring says what it reads past a sequence's end and why that changes no bit); 1: k
# and v alone; 0: by pointers. The untransposed walk (16 wide, where programs are few) always takes pointers. Why:
# RLA's walks gained from TMA (its forward walks 8%, its one reverse walk 10%, H100 2026-12-06: rla/chunk.py WALK_TMA,
# DU_TMA). Expected (written before, 2026-12-06 18:50): the walk -5 to -10%; ptxas had its loop longer (SASS a loop at
# 0 / 1 / 2, Triton 3.6: B=16 T=2k transposed 775 / 794 / 848, B=1 T=32k untransposed 643 / 680 / 704). Measured 0 /
# 1 / 2 (H100, 2026-12-06 21:52, `profile_kernels.py --ops rdn --wall --tune --knob WALK_TMA=0,1,2`, the walk through
# TMA in both orientations), forward wall ms (the walk's GPU ms): B=16 T=2k (transposed) 1.876 / 1.757 / **1.713**
# (1.215 / 1.106 / 1.039); B=2 T=16k (untransposed) **2.376** / 2.454 / 2.511 (1.733 / 1.819 / 1.881); B=1 T=32k
# 3.223 / 3.547 / 3.431 (2.616 / 2.877 / 2.762). So the transposed walk alone takes it; the untransposed lost.
WALK_TMA = 2
# The backward's reverse walk runs as two walks (chunk_bwd.py says why; one launch or two, TRAILED_WALKS), at four
# warps (WALK_WARPS) and two stages, the H200 autotuner's pick for both (2026-12-01); float64-checked at that config
# the same day (every case of scripts/gpu_check_rdn.py --all).
REVERSE_WALK_STAGES = 2
# The gradient kernel (chunk_bwd._rdn_bwd_grad_kernel), two knobs timed on the H200 (2026-12-01 morning, B=16 T=2k,
# profile_kernels.py --tune) on its version of then, which also did the chunk-matrix work (now _rdn_bwd_mats_kernel's,
# once a chunk) in every K-block program: half state dots, 64-wide K-blocks 4.10 ms; tf32 state dots 4.42 (BK 64) / 4.34
# (BK 128); half, BK 128 4.12. Re-timed on today's kernel (2026-12-01 10:30, profile_kernels.py --grad-bk 64,128):
# BK 64 2.69 ms, BK 128 3.19-3.20 (the autotuner's best of each); with the token tensors in bf16, 2.57 and 2.96;
# on raw token tiles (2026-12-01 11:08) BK 64 2.39.
# GRAD_BK: its K-block width, 64 (two programs a chunk at K = 128, each reading the chunk's token tensors) or 128 (one
# program, more registers). Its state dots were a switch until 2026-12-01 (half dots on rounded token tiles, or tf32
# on fp32 copies; the float64 check passed either way, bf16 worst 3.3e-3 and 3.1e-3): with the token tensors stored
# in the input dtype they are exact-product half dots with the row gates after them, no switch left.
# Since 2026-12-01 13:30 the kernel holds its products as [BK, BT] (wgmma at BK = 64, chunk_bwd.py), six [BK, 32]
# fp32 accumulators: at GRAD_BV 64, 1.41 ms at BK 64, 1.52 at 128 (8 warps, 3 stages; --knob GRAD_BK=64,128, 13:53).
GRAD_BK = 64
# V-block width of the forward's output kernel (chunk_fwd._rdn_out_kernel): each program remakes the chunk's Mqi and
# reads its q and k, once a V-block. At B=16 T=2k H=16 K=V=128 bf16 (H200, 2026-12-01, profile_kernels.py --knob
# OUT_BV=32,64 and 64,128, U and W in bf16): 1.32 ms at 32 wide (0.90 with U, W fp32), 0.575 at 64, 0.58 at 128.
OUT_BV = 64
# K-block width of the reverse walks' Kb, Kc kernel (chunk_bwd._rdn_bwd_prep_k_kernel). Until 2026-12-01 one kernel
# made all five operators, its K-block programs beside one [BT, BT] program a chunk: 0.46 ms at 64 wide. Split since
# (the Pb, Qb, Pc kernel 0.22 ms), at B=16 T=2k H=16 K=V=128 bf16 (H200, Triton 3.6, 2026-12-01 19:28,
# profile_kernels.py --tune --knob PREP_BK=64,128): Kb, Kc 0.189 ms at 64 wide, 0.155 at 128 (T_beta, T_gamma and the
# decays read once a chunk).
PREP_BK = 128
# V-block widths of the forward walk and its rerun (WALK_BV), the two reverse walks (REVERSE_WALK_BV), the chunk-matrix
# kernel (MATS_BV) and the gradient kernel (GRAD_BV). 0 for the forward walk: 32, or 16 where (sequence, head, V-block)
# programs would not fill the GPU (_Layout.walk_BV). Timed at B=16 T=2k H=16 K=V=128 bf16 (H200, Triton 3.6, 2026-12-01
# 13:30, profile_kernels.py --tune --knob): walks at 16 wide are slower (forward walk 1.17 -> 1.74 ms, rerun 1.85 ->
# 2.13, reverse walks 0.94 + 0.84 -> 1.56 + 1.33), at 32 the same as auto; the chunk-parallel kernels gain at 64 wide
# (half the V-loop turns): chunk matrices 0.82 -> 0.74, gradient kernel 1.62 -> 1.41.
WALK_BV = 0
# The forward walk transposed (chunk_fwd._rdn_walk_t_kernel, every dot with the V-block's rows; 1: at 32-token chunks
# where the walk runs its full width, 0: never) and its warps. Walk ms at H=16 K=V=128 bf16, untransposed -> transposed
# (H200, Triton 3.6, 2026-12-03 05:57-06:01, RLA_KERNELS_FIXED_CONFIG=1 profile_kernels.py --ops rdn --knob WALK_T=0,1
# --knob WALK_T_BV=16,32,64 --knob WALK_T_WARPS=2,4,8): 32 wide, 4 warps, B=16 T=2k 1.55 -> 1.35, B=4 T=8k 1.55 -> 1.33;
# the narrowed 16-wide walk (few programs: B=1 T=32k) 3.32 -> 3.58 at best (8 warps), so it stays untransposed there;
# 64 wide 1.71 (4 warps) and 1.84 (8) at 2k; a 168-register cap (three programs an SM) took the walk 1.53 -> 2.60.
WALK_T = 1
WALK_T_WARPS = 4
# The reverse walks: 0 is 64 wide where (sequence, head, 64-wide V-block) programs outnumber the SMs, else as WALK_BV
# (_Layout.reverse_walk_BV). Backward wall ms at H=16 K=V=128 bf16, 32 -> 64 wide (H200, Triton 3.6, 2026-12-02 19:22,
# RLA_KERNELS_FIXED_CONFIG=1 profile_kernels.py --ops rdn --wall --bwd-chunks 32 --knob REVERSE_WALK_BV=32,64): B=16
# T=2k 7.06 -> 6.70 (dR's walk 0.96 -> 0.64, dS's 0.93 -> 0.89), B=8 T=4k 7.09 -> 6.73, B=4 T=8k 7.29 -> 7.31 (64 wide
# the walks fit at once and run as one launch, TRAILED_WALKS), B=2 T=16k 8.68 -> 8.63, B=1 T=32k 10.89 -> 11.39 (both
# against 32 wide; the automatic 16 there is faster still). Three pipelining stages at 64 wide slowed dS's walk to 1.55
# ms at 2k; at 32 wide they changed nothing (+-0.05). dR's walk alone at 2k (docs/next/rdn-walk-anatomy.py, 19:19): 0.94
# ms at 32 wide, 0.62 at 64, 1.47 at 16; fla's bwd_dhu 0.43 at 32-token chunks.
REVERSE_WALK_BV = 0
# dR's and dS's reverse walks transposed (chunk_bwd._walk_r_t, _walk_s_t; 0: never, 1: dR's automatic, 2: always), as
# the forward walk (WALK_T). First-config ms at H=16 K=V=128 bf16, untransposed -> transposed (H200, Triton 3.6,
# 2026-12-03, RLA_KERNELS_FIXED_CONFIG=1 profile_kernels.py --ops rdn --wall --bwd-chunks 32). Both walks (06:16):
# dR's 0.64 -> 0.54 at B=16 T=2k (64 wide), 0.66 -> 0.54 at 4k, 0.97 -> 0.83 at 8k (32 wide), 1.91 -> 1.29 at 16k
# (16 wide); dS's 0.65 -> 0.72, 0.79 -> 0.87, 1.19 -> 1.41, 1.33 -> 2.65. dR's alone (06:23, --knob DR_WALK_T=0,1),
# backward wall: 6.42 -> 6.31 at 2k, 7.30 -> 7.19 at 8k, 10.19 -> 9.93 at B=1 T=32k (one launch, TRAILED_WALKS, 16
# wide), but 8.32 -> 8.90 at B=2 T=16k (two 16-wide launches, the rebuild beside them: dR's walk 1.95 -> 1.32 and then
# dS's 1.33 -> 2.53 with the rebuild moved onto it). So dR's walk transposed but as a 16-wide launch of its own.
DR_WALK_T = 1
DS_WALK_T = 0
# K-block width of the backward's two linear walks that rebuild the chunk states from kept U and W (keep_tokens,
# _rebuild_states; one launch of both, chunk_bwd._rdn_bwd_rebuild_kernel): 0 automatic (128, k^T read once a
# V-block), 64 or 128; and the chunks they step a loop turn (RLA's WALK_STEPS): 0 automatic, 1 or 2. Both walks, ms,
# at H=16 K=V=128 bf16 (H200, Triton 3.6, 2026-12-02 07:35-07:56, RLA_KERNELS_FIXED_CONFIG=1
# profile_kernels.py --ops rdn --knob REBUILD_BK=64,128 --knob REBUILD_STEPS=1,2), BK 64 at 1 / 2 chunks a turn, then
# BK 128 at 1 / 2: B=8 T=4k 0.761 / 0.804, 0.596 / 0.708; B=4 T=8k 0.914 / 0.823, 0.600 / 0.849; B=2 T=16k
# 1.206 / 1.516, 0.956 / 1.433; B=1 T=32k 1.590 / 1.448, 1.574 / 1.389; B=16 T=2k 0.692 (BK 64), 0.593 / 0.697.
# Automatic: 128 wide always; 2 chunks a turn where the launch's programs (both walks) are fewer than two an SM (32k
# only at these dims: 256 programs on 132 SMs). As two launches (RLA's walk kernel each) they took 0.64 ms at 2k and
# 2.41 at 32k. At 64-token chunks (BWD_CHUNK_SIZE) one chunk a turn always: at B=1 T=32k 0.88 ms against 1.32 at two
# (H100, autotuned, 2026-12-08 00:47, the rebuild after one-launch walks).
REBUILD_BK = 0
REBUILD_STEPS = 0
# V-block width of the rebuild: 0 automatic (rebuild_width), or a power of two >= 16. Beside the reverse walks (two
# launches, OVERLAP 1), whose programs already fill the SMs, its own programs crowd theirs: there it wants few, as
# RLA's rerun walk does (rla/chunk.py's _Layout._rerun_blocks). Backward wall ms at 16 / 32 / 64 wide, H=16 K=V=128
# bf16 (H100, Triton 3.6, 2026-12-06 14:53, `profile_kernels.py --ops rdn --wall --tune --knob REBUILD_BV=16,32,64`;
# the forward walk's width was 32 at 2k and 8k, 16 at 16k and 32k): B=16 T=2k 4.664 / 4.455 / **4.449**, B=4 T=8k
# 5.481 / 4.931 / **4.864**, B=2 T=16k 5.948 / 5.766 / **5.606** (the rebuild 2.27 / 1.67 / 2.21 ms of GPU time beside
# the walks), B=1 T=32k **7.299** / 7.358 / 7.517 (the walks one launch, TRAILED_WALKS: the rebuild after them, alone,
# wants the forward walk's many programs).
REBUILD_BV = 0
# Warps of the rebuild kernel (ptxas sm_90 at B=1 T=32k, BK 128, BV 16, two chunks a turn: 84 registers, 70 KB
# shared at 4). 4 -> 8 (H200, 2026-12-02 11:17, profile_kernels.py --knob REBUILD_WARPS=4,8): 1.389 -> 1.390 ms at
# B=1 T=32k, 0.97 -> 1.08 at B=2 T=16k.
REBUILD_WARPS = 4
# The segments an uncut-able forward (no walk kept, fixed length) is cut into where the caller passes segments=None:
# 0 = segmented.auto_segments' choice (the fused walk at B=1 T=32k H=16 K=V=128: its 128 programs are over half the
# SMs), N > 0 = N. A knob so that profile_kernels.py --infer --knob FORWARD_SEGMENTS=0,2,4,8 can time the segmented
# forward where the automatic rule never takes it: its rule was set on SmolLM2's prefill (H=9, 2026-11-30), before
# most of the fused walk's gains.
FORWARD_SEGMENTS = 0
# 2: the forward walk stores the even chunks' start states alone (half its state stores) where only the output
# kernel reads them (not kept for the backward), and the output kernel runs at twice the walk's chunk (64 tokens),
# reading those states: o = exp(G) Q S0 + Mq U + gamma (exp(G) Q R0 + Mqi W) holds at any chunking of the per-token
# U, W (the pseudo-values of a chunk's tokens against its own start state; the 64-token Mq's off-diagonal block is
# what steps the second half's start state from the first's), and at 64 rows its dots run on wgmma where 32-row ones
# are mma.sync. 1: every chunk's state, the output at the walk's chunk. At 32-token chunks (packed batches with
# the chunk tables at 64: a sequence's state rows are then ceil(len / 64)).
# Forward ms at H=16 K=V=128 bf16, 1 -> 2 (H200, Triton 3.6, 2026-12-03 09:33, RLA_KERNELS_FIXED_CONFIG=1
# profile_kernels.py --ops rdn --wall --knob STATE_EVERY=1,2): B=16 T=2k 2.06 -> 1.95 (walk 1.35 -> 1.27, output 0.57
# -> 0.54), B=1 T=32k 4.10 -> 4.02; autotuned (bench) 1.81 -> 1.65 and 3.12 -> 2.99. Packed (profile_kernels.py
# --packed, 16 sequences of 1615-2600 tokens, 2026-12-03 12:03): GPU 2.33 -> 2.24, wall 3.08 -> 3.10 (the output's
# tables cost their host work, and then each took a device sync; triton_utils.chunk_tables). The same halving for the
# backward's rebuild and gradient kernel, the gradient kernel stepping each odd chunk's state itself at 32 rows, lost
# (docs/next/rdn-states-every-other-chunk.patch: gradient kernel 2.67 -> 3.48 ms at 2k, spilling).
STATE_EVERY = 2
MATS_BV = 64
GRAD_BV = 64
# 1: the rebuilt chunk states (keep_tokens), read by the gradient kernel alone, are rebuilt on a second stream
# (triton_utils.Beside) beside the reverse walks and the chunk matrices, its stream forked after the operators and
# the rebuild queued after the walks; 0: on the one stream, after the walks. Backward ms at H=16 K=V=128 bf16 (H200,
# Triton 3.6, 2026-12-02 12:12, autotuned, two walk launches): B=1 T=32k 9.38 -> 8.37, B=2 T=16k 6.53 -> 6.26,
# B=16 T=2k 4.90 -> 4.88. Queued before the operators it took the SMs first and lost (9.47, 6.65, 4.87). Never beside
# the one-launch walks (TRAILED_WALKS): at B=1 T=32k 7.81-7.84 ms on the one stream, 8.23-8.29 beside them (12:22).
# Tried 2026-12-07 22:35 (H100, `profile_kernels.py --ops rdn --wall --tune --knob OVERLAP=1,2 --knob REBUILD_BV=0,32`,
# B=1 T=32k; in git at 12a90e3): after one-launch walks the rebuild forked beside the chunk-matrix kernel instead of
# before it on the one stream. Lost: backward wall 7.26 -> 7.50 ms (the rebuild 1.14 -> 1.38, the chunk matrices 0.73
# as alone), 7.66 at REBUILD_BV 32; the two did not overlap, they shared the SMs.
OVERLAP = 1
# The reverse walks as one launch, dS's walk trailing dR's by a chunk or more (chunk_bwd._rdn_bwd_walks_kernel),
# where the two walks' programs all fit at once, two an SM: 0 automatic (trailed_walks), 1 two launches, 2 one.
# Why: at B=1 T=32k (128 programs a walk, 132 SMs) each walk alone runs one latency-bound program an SM. Backward ms
# at H=16 K=V=128 bf16 (H200, Triton 3.6, 2026-12-02 12:12-12:23, autotuned, the rebuild on the one stream): B=1
# T=32k 9.38-9.40 -> 7.81-7.84; where the programs do not fit, slower: B=2 T=16k 6.53 -> 7.62, B=16 T=2k 4.90 ->
# 5.88. One launch holds both walks' registers: 254 a thread (ptxas sm_90), still two programs an SM.
TRAILED_WALKS = 0
# The order of the chunk-parallel kernels' programs (_triton_helpers.chunk_ids has the four): 0 the grid's own (one
# head's chunks after another's), 1 one chunk's heads after another's, 2 as 1 with each (chunk, head)'s K- or V-block
# programs together. Why: packed batches (every sequence's chunks of one head on axis 0) and long sequences ran the
# chunk-parallel kernels 6-16% slower than B=16 T=2k with identical SASS. Backward wall / gradient kernel ms at
# H=16 K=V=128 bf16, 0 -> 1 (H200, Triton 3.6, 2026-12-03 14:39-14:43, profile_kernels.py --knob CHUNK_ORDER=0,1,
# first configs): packed B=16 T=2k (16 sequences of 1615-2600 tokens) 7.01 -> 6.77 / 3.10 -> 2.96; the same packed
# at equal lengths 6.86 -> 6.63 / 3.09 -> 2.96; B=1 T=32k 9.85 -> 9.62 / 2.99 -> 2.85; B=16 T=2k 6.25 -> 6.24 / 2.67
# -> 2.66 (its grid order already ran a few heads of a chunk and both K-blocks together). Forwards -0.01 to -0.02.
# 1 -> 2 (14:47-14:48): packed 6.77 -> 6.68 / 2.97 -> 2.83, B=1 T=32k 9.66 -> 9.59 / 2.86 -> 2.76, but B=16 T=2k
# 6.25 -> 6.38 / 2.68 -> 2.77, and the one-block prep_k kernel 0.16 -> 0.19 at all three (its order is 1's: the
# extra int64 divisions?). A block's programs together win where order 1 puts them a whole chunk axis apart (1040
# or 1024 programs, out of the L2) and lose where that is 64 programs (B=16 T=2k). Hence 3: 2 by groups of
# CHUNK_GROUP (chunk, head) pairs, a pair's blocks CHUNK_GROUP programs apart at every shape, in int32 (one-block
# kernels take 1's arithmetic: the same order without the divisions that cost prep_k 0.16 -> 0.19). 1 -> 3 (H200,
# 2026-12-03 17:43-17:51, first configs): packed backward wall 6.85 -> 6.71 / gradient kernel 2.97 -> 2.83, B=1
# T=32k 9.69 -> 9.56 / 2.84 -> 2.70 (groups of 32, 64, 128 within 0.03 ms of each other), B=16 T=2k 6.24 -> 6.30-6.34
# / 2.67 -> 2.69-2.72, where both orders run the same programs in the same order (the divisions?); autotuned fwd+bwd
# 2k..32k 6.20 / 6.37 / 7.07 / 9.29 / 11.12 -> 6.28 / 6.28 / 6.91 / 9.04 / 10.83 (BENCHMARKS.md).
CHUNK_ORDER = 3
CHUNK_GROUP = 64  # CHUNK_ORDER 3's (chunk, head) pairs a group
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size must be 16, 32 or 64; got {chunk_size}")


class _Layout:
    """Shapes, launch geometry and varlen bookkeeping shared by the kernels of one call."""

    def __init__(self, q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size):
        self.N = _check_inputs(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, False)
        if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"q, k, v must share one dtype among float32, bfloat16, float16; got "
                             f"{q.dtype}, {k.dtype}, {v.dtype}")
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        if self.K > 256 or self.V > 256:
            raise ValueError(f"head dims K and V must be at most 256 for rdn's triton chunk kernels; got K={self.K}, "
                             f"V={self.V} (use backend='torch' for larger heads)")
        _check_chunk_size(chunk_size)
        # Grid axes 1 and 2 stop at GRID_AXIS_LIMIT: the walks put (sequence, head) there, the segmented walks
        # (sequence, segment, head; segmented.usable_segments), the chunk-parallel kernels a V- or K-block and
        # (batch, head) or the head; chunks always go on axis 0, which has no such limit.
        if self.N * self.H > GRID_AXIS_LIMIT:
            raise ValueError(f"sequences x heads must be at most {GRID_AXIS_LIMIT} (one CUDA grid axis); got "
                             f"{self.N} x {self.H}: split the batch")
        self.BT = chunk_size
        self.BK = max(16, next_power_of_2(self.K))
        self.BV = max(16, min(32, next_power_of_2(self.V)))
        self.NV = cdiv(self.V, self.BV)
        # The walks are sequential over chunks: their only parallelism is (sequence, head, V-block). When
        # that is below the GPU's SM count (a long prefill at batch 1), narrower V-blocks give more programs.
        sms = sm_count(q.device)
        self.walk_BV = 16 if self.N * self.H * self.NV < sms else self.BV
        # The reverse walks take 64-wide V-blocks where those still give more programs than SMs (REVERSE_WALK_BV's
        # comment has the measurements): half the programs, each carrying twice the columns through the same chain.
        wide = triton_utils.wide_reverse_walk(self.V, self.N * self.H, sms)
        self.reverse_walk_BV = 64 if wide else self.walk_BV
        self.residual_code = (_RESIDUAL_IDENTITY if clip is None
                              else _RESIDUAL_CLIP if residual == "clip" else _RESIDUAL_TANH)
        self.clip = 1.0 if clip is None else float(clip)
        self.x_sides = clip_sides(self.clip, q.dtype)
        # Dots of fp32 operands are exact (ieee) for fp32 inputs, tf32 for half inputs, whose own rounding
        # (~4e-3) dominates tf32's; dots of two raw half input tiles (wy.py's k k^T) are exact either way.
        self.dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
        self.cu_seqlens = cu_seqlens
        self.varlen = cu_seqlens is not None
        if CHUNK_ORDER not in (0, 1, 2, 3) or CHUNK_GROUP < 1:
            raise ValueError(f"launch knobs CHUNK_ORDER must be 0 (the grid's order), 1 (a chunk's heads first), 2 "
                             f"(and its blocks together) or 3 (2 by groups of CHUNK_GROUP >= 1 (chunk, head) pairs); "
                             f"got {CHUNK_ORDER!r} and {CHUNK_GROUP!r}")
        self.order = dict(CHUNK_ORDER=CHUNK_ORDER, CHUNK_GROUP=CHUNK_GROUP)  # the chunk-parallel kernels' (chunk_ids)
        if self.varlen:
            self.chunk_indices, self.chunk_offsets = chunk_tables(cu_seqlens, self.BT, self.T)
            self.n_chunks = self.chunk_indices.shape[0]
            self.chunk_grid = (self.n_chunks, self.H)
        else:
            self.chunk_indices = self.chunk_offsets = None
            nt = cdiv(self.T, self.BT)
            self.n_chunks = self.B * nt
            self.chunk_grid = (nt, self.B * self.H)

    def width(self, knob: str, auto: int) -> int:
        """A V-block width: the launch knob named ``knob`` (a module int above; 0 means ``auto``), validated and no
        wider than V's power of two (triton_utils.knob_width)."""
        return triton_utils.knob_width(knob, globals()[knob], auto, self.V)

    @property
    def chunk_grid_v(self):
        """Chunk-parallel programs per V-block: (chunk, V-block, head or (sequence, head)); chunks on the
        first axis, the only one without a 65535 limit."""
        return (self.chunk_grid[0], self.NV, self.chunk_grid[1])

    def state(self, q):
        return q.new_empty(self.N, self.H, self.K, self.V, dtype=torch.float32)

    def chunk_states(self, q, rows=None):
        """The walks' stored chunk-start states (and state adjoints), in the input dtype, as fla stores its h and
        dh: the walks carry fp32 states in registers, so the stored copies round once (2^-9 for bf16, no build-up
        across chunks; the walks' own half dots round their operand the same way, except the ~fp32 S path of the
        backward's X), and the bytes that every chunk-parallel kernel streams halve. Float64
        error with bf16 states, H200 2026-11-30 (a monkeypatch of this method, gpu_check_rdn.check's bf16
        K = 128 cases): 2.9e-3 against 2.1e-3 with fp32 ones."""
        return q.new_empty(self.n_chunks if rows is None else rows, self.H, self.K, self.V, dtype=q.dtype)

    def per_token(self, q, width, dtype=torch.float32):
        return q.new_empty(self.B, self.T, self.H, width, dtype=dtype)

    def tokens(self, q):
        """A [B, T, H, V] tensor that one kernel hands to the next (the walks' U, W, X; the reverse walk's dyr, dX,
        dyv) in the input dtype, as fla hands on its v_new and dv: their readers' state dots round them to it
        anyway, their [BT, BT] gradient dots then multiply exact half values, and the chunk-parallel kernels, which
        stream them (the gradient kernel once a K-block), read half the bytes. X keeps its side of the clip (the
        gradient's mask) through the rounding: chunk_fwd.py, NUDGE_X."""
        return q.new_empty(self.B, self.T, self.H, self.V)


@functools.lru_cache(maxsize=64)  # (tensor round trips: ~80 us of host time a call, for a handful of values)
def clip_sides(clip: float, dtype: torch.dtype) -> tuple[float, float]:
    """The values of ``dtype`` next to the clip c on either side, as fp32 floats: the largest <= c and the smallest
    > c, where the forward walk stores an X whose rounding to ``dtype`` would cross c (chunk_fwd.py, NUDGE_X)."""
    int_dtype = {2: torch.int16, 4: torch.int32}[dtype.itemsize]
    c = torch.tensor([clip], dtype=torch.float32)  # as the kernels compare: in fp32
    near = c.to(dtype)  # c > 0 rounded: its bit pattern steps by one value either way
    down, up = ((near.view(int_dtype) + step).view(dtype) for step in (-1, 1))
    below = bool(near.float() <= c)
    inside, outside = (near, up) if below else (down, near)
    return float(inside.float()), float(outside.float())


def _contiguous(*xs):
    return [None if x is None else x.contiguous() for x in xs]


def wy_shape(q, chunk_size: int = CHUNK_SIZE) -> tuple:
    """Shape of the forward's saved chunk matrices (``save_wy``): T_beta, T_gamma, Mk as [3, B, T, H, BT] fp32."""
    return (3, *q.shape[:3], chunk_size)


def kept_walk_shapes(q, V: int, cu_seqlens=None, chunk_size: int = CHUNK_SIZE) -> tuple:
    """Shapes of the forward walk's kept outputs (``keep_walk``): h_s, h_r [rows, H, K, V] (rows: the layout's
    n_chunks, for packed batches shapes.kept_rows' bound, as triton_utils.chunk_tables sizes its tables)
    and U, W, X [B, T, H, V]; all in q's dtype (shapes.rdn_kept_walk_dtypes)."""
    return shapes.kept_walk_shapes(q, V, cu_seqlens, chunk_size, per_token=3)


def _wy(L: _Layout, k, g, beta, gamma, out=None):
    """T_beta, T_gamma, Mk of every chunk, [B, T, H, BT] fp32, as the three of ``out`` ([3, B, T, H, BT], the
    forward's saved copy) when given."""
    if out is None:
        out = k.new_empty(wy_shape(k, L.BT), dtype=torch.float32)
    t_beta, t_gamma, m_k = out.unbind(0)
    if L.n_chunks:
        _rdn_wy_kernel[L.chunk_grid](
            k, g, beta, gamma, t_beta, t_gamma, m_k, L.cu_seqlens, L.chunk_indices, L.T,
            H=L.H, K=L.K, BT=L.BT, BK=L.BK, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen, **L.order)
    return t_beta, t_gamma, m_k


def _is_wy(wy, k, chunk_size: int) -> bool:
    """Whether ``wy`` is a forward's saved chunk matrices (``save_wy``) at ``chunk_size``-token chunks for this k."""
    return wy is not None and tuple(wy.shape) == wy_shape(k, chunk_size) and wy.dtype == torch.float32


def _widen_wy(L: _Layout, k, g, beta, gamma, wy):
    """T_beta, T_gamma, Mk at 64-token chunks (L.BT = 64) from a 32-token forward's saved ``wy`` ([3, B, T, H, 32]):
    its blocks on the diagonal, the ones below made (wy.py, _rdn_wy_widen_kernel)."""
    out = k.new_empty(wy_shape(k, 64), dtype=torch.float32)
    if L.n_chunks:
        _rdn_wy_widen_kernel[L.chunk_grid](
            k, g, beta, gamma, *wy.unbind(0), *out.unbind(0), L.cu_seqlens, L.chunk_indices, L.T,
            H=L.H, K=L.K, BK=L.BK, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen, **L.order)
    return out.unbind(0)


def _walk_operators(L: _Layout, q, k, g, t_beta, t_gamma, m_k):
    """The reverse walks' chunk operators (chunk_bwd.py): Kb, Kc [B, T, H, K] (_rdn_bwd_prep_k_kernel) and Pb, Qb,
    Pc [B, T, H, BT] (_rdn_bwd_prep_p_kernel), all in k's dtype: the walks take them in half dots, as fla's backward
    takes its intra-chunk matrices (made at ~fp32, rounded once where stored)."""
    k_b, k_c = torch.empty_like(k), torch.empty_like(k)
    p_b, q_b, p_c = (L.per_token(k, L.BT, k.dtype) for _ in range(3))
    if L.n_chunks:
        BKP = triton_utils.knob_width("PREP_BK", PREP_BK, PREP_BK, L.K)  # min(PREP_BK, L.BK), validated
        _rdn_bwd_prep_k_kernel[(L.chunk_grid[0], cdiv(L.K, BKP), L.chunk_grid[1])](
            k, g, t_beta, t_gamma, k_b, k_c, L.cu_seqlens, L.chunk_indices, L.T,
            H=L.H, K=L.K, BT=L.BT, BKP=BKP, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen, **L.order)
        _rdn_bwd_prep_p_kernel[L.chunk_grid](
            q, k, g, t_beta, t_gamma, m_k, p_b, q_b, p_c, L.cu_seqlens, L.chunk_indices, L.T,
            H=L.H, K=L.K, BT=L.BT, BK=L.BK, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen, **L.order)
    return k_b, k_c, p_b, q_b, p_c


def _walk(L: _Layout, k, v, g, beta, gamma, t_beta, t_gamma, m_k, S0, R0, store_x, every=1):
    """The forward walk: chunk-start states, final states, U and W (for the output and the backward's gradients)
    and, with ``store_x``, X (for the backward, at its precision) (see chunk_fwd.py). ``every`` 2: the even chunks'
    states alone (STATE_EVERY; never for ``keep_walk``, whose L.n_chunks rows are the shape the op's fake announces)."""
    rows = _state_rows(L, every)
    offsets = _output_chunks(L, every)[3] if L.varlen else L.chunk_offsets
    h_s, h_r = L.chunk_states(k, rows), L.chunk_states(k, rows)
    u, w, x = L.tokens(k), L.tokens(k), (L.tokens(k) if store_x else None)
    S_T, R_T = L.state(k), L.state(k)
    # Raw half k only at 32-token chunks: at 64 (the forward's) the same kernel gave NaN at K = 64 and an
    # illegal memory access at K = 128 on the H200 (Triton 3.6, 4 and 8 warps alike), where fp32 k tiles, or
    # raw ones at 32-token chunks, agree with the float64 oracle (scripts/gpu_check_rdn.py, 2026-11-30).
    # X decides the clip's gradient mask: for the backward its chunk-matrix dots run at ~fp32 (tf32x3); its
    # k.S read is a split dot (~2^-16) where k is raw, a tf32 dot at 64-token chunks.
    precise = store_x and L.dot_prec == "tf32"
    exact = "half3" if X_HALF3 and k.dtype == torch.bfloat16 and L.BT <= 32 else "tf32x3"
    u_prec = exact if precise and X_TF32X3 in (1, 2) else L.dot_prec
    x_prec = exact if precise and X_TF32X3 == 1 else L.dot_prec
    w_prec = L.dot_prec
    if INFER_HALF and not store_x and k.dtype != torch.float32:
        u_prec = x_prec = w_prec = "half"
    BV = L.width("WALK_BV", L.walk_BV)
    # Transposed where the walk runs its full width (WALK_T has the times); that kernel's k is always raw.
    if WALK_T and L.BT <= 32 and BV == L.BV:
        kernel, launch = _rdn_walk_t_kernel, dict(num_warps=WALK_T_WARPS)
    else:
        kernel, launch = _rdn_walk_kernel, dict(RAW_K=L.BT <= 32, num_warps=WALK_WARPS)
    tiles = _walk_descriptors(L, BV, k, v, t_beta, t_gamma, m_k, kernel is _rdn_walk_t_kernel)
    k_t, v_t, tb_t, tc_t, mk_t = (tiles + (t_beta, t_gamma, m_k))[:5] if tiles else (k, v, t_beta, t_gamma, m_k)
    kernel[(cdiv(L.V, BV), L.N * L.H)](
        k_t, v_t, g, beta, gamma, tb_t, tc_t, mk_t, S0, R0,
        h_s, h_r, u, w, x, S_T, R_T,
        L.cu_seqlens, offsets, L.clip, *L.x_sides, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, U_PREC=u_prec, X_PREC=x_prec, W_PREC=w_prec,
        HAS_S0=S0 is not None, HAS_R0=R0 is not None, STORE_X=store_x,
        NUDGE_X=store_x and L.residual_code == _RESIDUAL_CLIP and k.dtype != torch.float32, IS_VARLEN=L.varlen,
        SPLIT_S=store_x, STATE_EVERY=every, num_stages=WALK_STAGES, **launch, **(dict(TMA=WALK_TMA) if tiles else {}),
    )
    return h_s, h_r, u, w, x, S_T, R_T


def _walk_descriptors(L: _Layout, BV: int, k, v, t_beta, t_gamma, m_k, transposed: bool) -> tuple | None:
    """The transposed forward walk's k ([tokens, H x K] in [BT, K] tiles), v ([tokens, H x V] in [BT, BV]) and, at
    WALK_TMA 2, chunk matrices ([tokens, H x BT] in [BT, BT]) as TMA descriptors, or None (pointers) for the
    untransposed walk, where WALK_TMA is 0, the device has no TMA, a tile would cross a head (K not a power of two, V
    not a multiple of BV) or a tensor's layout is not one TMA reads."""
    if WALK_TMA not in (0, 1, 2):
        raise ValueError(f"launch knob WALK_TMA must be 0 (pointers), 1 (k and v through TMA descriptors) or 2 (the "
                         f"chunk matrices too); got {WALK_TMA!r}")
    if not transposed or not WALK_TMA or L.K != L.BK or L.V % BV:
        return None
    matrices = (t_beta, t_gamma, m_k) if WALK_TMA == 2 else ()
    return triton_utils.rows_descriptors((k, L.H * L.K, (L.BT, L.BK)), (v, L.H * L.V, (L.BT, BV)),
                                         *((m, L.H * L.BT, (L.BT, L.BT)) for m in matrices))


def chunk_rdn_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", S0=None, R0=None,
                  cu_seqlens=None, *, chunk_size: int = CHUNK_SIZE, segments: int | None = None,
                  save_wy: bool = False, keep_walk: bool = False, keep_tokens: bool = False):
    """RDN forward over whole sequences: ``(o, S_T, R_T)``, o in v's dtype, states fp32 [N, H, K, V].

    ``segments``: cut each sequence into that many pieces walked in parallel (segmented.py; fixed-length
    batches only); None chooses by the GPU's size (only long sequences at small batch are cut).
    ``save_wy``: also return the chunk matrices T_beta, T_gamma, Mk ([3, B, T, H, chunk_size] fp32, ``wy_shape``)
    for ``chunk_rdn_bwd(..., wy=)``. fp32, not the input dtype: the backward's rerun walk takes X, whose sign
    against the clip masks the gradient, through them at ~fp32 (tf32x3).
    ``keep_walk``: also return the walk's ``(h_s, h_r, U, W, X)`` (``kept_walk_shapes``) for ``chunk_rdn_bwd(...,
    walk=)``, which then skips its rerun of this walk. The walk then stores X besides U and W, and runs its S
    path at the rerun's precision (tf32x3 for half inputs; U, W and the states round as the rerun's, within tf32
    of the default forward's). Never cut into segments: the segmented walk has no X; ``segments`` > 1 with it is
    an error, and None means 1 (a backward would rerun the uncut walk anyway).
    ``keep_tokens`` (without keep_walk; the API's default with autograd): also return the walk's per-token tensors
    ``(U, W, X)`` alone, made as keep_walk makes them, from which ``chunk_rdn_bwd(..., walk=)`` rebuilds the chunk
    states with two linear walks (S1 = exp(GL) S0 + (K exp(GL - G))^T U, R likewise with W) instead of rerunning this
    one. Uncut as keep_walk.
    """
    every = 1 if keep_walk else state_every(chunk_size)  # (1 too for a cut walk: below; packed ones are never cut)
    L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    if segments is not None and (segments < 1 or (cu_seqlens is not None and segments != 1)):
        raise ValueError(f"segments must be a positive int, and 1 with cu_seqlens (packed batches are not cut); "
                         f"got {segments}{' with cu_seqlens' if cu_seqlens is not None else ''}")
    keep = "keep_walk" if keep_walk else "keep_tokens" if keep_tokens else ""
    if keep and segments not in (None, 1):
        raise ValueError(f"{keep} needs the uncut walk (the segmented one stores no X); got segments={segments}")
    if not isinstance(FORWARD_SEGMENTS, int) or FORWARD_SEGMENTS < 0:
        raise ValueError(f"launch knob FORWARD_SEGMENTS must be an int >= 0 (0: automatic); got {FORWARD_SEGMENTS!r}")
    if segments is None:
        segments = 1 if L.varlen or keep else (FORWARD_SEGMENTS
                                               or auto_segments(L.B, L.T, L.H, L.K, L.V, sm_count(q.device)))
    segments = usable_segments(segments, L.B, L.T, L.H, L.BT)
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0 = _contiguous(q, k, v, g, beta, gamma, S0, R0)
    every = 1 if segments > 1 else every
    wy = k.new_empty(wy_shape(k, L.BT), dtype=torch.float32)
    t_beta, t_gamma, m_k = _wy(L, k, g, beta, gamma, wy)
    # Every walk takes the gates in fp32 (triton_utils.walk_gates). With bf16 gates Nsight Compute (H200, B=16 T=2k
    # H=16 K=V=128 bf16, 2026-12-04, scripts/ncu_kernels.py) put 20% of the inference walk's warp stalls, 6% of the
    # training walk's, 30% of dS's reverse walk's and ~25% of the rebuild's on their loads and the shifts that widen
    # them. Measured with bf16 gates (profile_kernels.py --tune --wall --infer, H200, 2026-12-04 20:40 -> 21:00): B=1
    # T=32k, one walk program an SM, the training walk 3.37 -> 2.90 ms, the inference walk 2.57 -> 2.10, the backward
    # wall 7.23 -> 6.96; B=16 T=2k, where a second program hid the latency, the training walk 1.29 -> 1.35 (the 4-byte
    # copies' instructions), the backward 4.01 -> 3.97. `bench kernels` passes fp32 gates: it ran so already.
    gates = walk_gates(g, beta, gamma)
    if segments > 1:
        h_s, h_r, u, w, S_T, R_T = chunk_rdn_fwd_segmented(
            L, q, k, v, *gates, t_beta, t_gamma, m_k, S0, R0, segments)
        # In the input dtype as the walk's (_Layout.chunk_states): the output kernel's q.S is then one half dot
        # (a split dot at 64-token chunks is unchecked on the GPU: the walk's failed there, _walk).
        h_s, h_r = h_s.to(q.dtype), h_r.to(q.dtype)
    else:
        h_s, h_r, u, w, x, S_T, R_T = _walk(L, k, v, *gates, t_beta, t_gamma, m_k, S0, R0, bool(keep), every=every)
    del gates
    o = torch.empty_like(v)
    if L.n_chunks:
        BVO = L.width("OUT_BV", OUT_BV)
        BTO, grid, indices, _ = _output_chunks(L, every)  # (its state rows: the walk's every-th, STATE_EVERY)
        _rdn_out_kernel[(grid[0], cdiv(L.V, BVO), grid[1])](
            q, k, g, gamma, h_s, h_r, u, w, o, L.cu_seqlens, indices, scale, L.T,
            H=L.H, K=L.K, V=L.V, BT=BTO, BK=L.BK, BV=BVO, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen,
            **L.order)
    kept = ((h_s, h_r, u, w, x),) if keep_walk else ((u, w, x),) if keep_tokens else ()
    return (o, S_T, R_T) + ((wy,) if save_wy else ()) + kept


def _fits(walk, L: _Layout, q, cu_seqlens) -> bool:
    """Whether ``walk`` is what a forward of this call's shapes kept: its walk (h_s, h_r, U, W, X; the states' rows
    pin its chunking) or its per-token tensors (U, W, X; their chunking is the saved chunk matrices', with which
    chunk_rdn_bwd takes them)."""
    if walk is None or len(walk) not in (3, 5):
        return False
    dtypes = shapes.rdn_kept_walk_dtypes(q.dtype)[-len(walk):]
    expected = kept_walk_shapes(q, L.V, cu_seqlens, L.BT)[-len(walk):]
    return all(tuple(t.shape) == s and t.dtype == d for t, s, d in zip(walk, expected, dtypes))


def rebuild_width(K: int, V: int, walk_BV: int, programs: int, sms: int, beside: bool, half: bool) -> int:
    """The rebuild's V-block (REBUILD_BV; 0 automatic): ``beside`` the reverse walks (two launches) and for half
    inputs (``half``) with K <= 128, the widest of 64 and 32 whose programs (both walks, ``programs`` sequence x head
    programs a walk and block) are at least half the ``sms`` SMs; else the forward walk's ``walk_BV``."""
    BV = walk_BV
    if beside and half and K <= 128:
        BV = triton_utils.beside_walk_width(V, 2 * cdiv(K, _rebuild_bk(K)) * programs, sms, walk_BV)
    return triton_utils.knob_width("REBUILD_BV", REBUILD_BV, BV, V)


def _rebuild_bk(K: int) -> int:
    """The rebuild walks' K-block (REBUILD_BK; 0: 128, k^T read once a V-block)."""
    return triton_utils.knob_width("REBUILD_BK", REBUILD_BK, 128, K)


def rebuild_blocks(K: int, V: int, BV: int, programs: int, sms: int, BT: int = CHUNK_SIZE) -> tuple[int, int]:
    """The rebuild walks' K-block width and chunks a loop turn (REBUILD_BK, REBUILD_STEPS; 0 means the automatic
    choice, whose measurements are at REBUILD_BK): ``programs`` (sequence x head) programs a walk, K- and V-block,
    ``BV`` wide, on ``sms`` SMs, at ``BT``-token chunks."""
    steps = triton_utils.knob_steps("REBUILD_STEPS", REBUILD_STEPS)
    BK = _rebuild_bk(K)
    launched = 2 * cdiv(K, BK) * cdiv(V, BV) * programs  # S's and R's walks share the launch
    return BK, steps or (2 if launched < 2 * sms and BT < 64 else 1)


def state_every(chunk_size: int) -> int:
    """Every how many chunks the forward walk stores a start state for the output kernel (STATE_EVERY; 1 at other
    chunk sizes than 32)."""
    if STATE_EVERY not in (1, 2):
        raise ValueError(f"launch knob STATE_EVERY must be 1 (every chunk's state) or 2 (the even chunks'); "
                         f"got {STATE_EVERY!r}")
    return 1 if chunk_size != 32 else STATE_EVERY


def _output_chunks(L: _Layout, every: int) -> tuple:
    """The output kernel's chunk, grid (chunk, head or (sequence, head)) and packed tables (chunk_tables: its chunk
    indices, and the state offsets the walk stores by) at ``every`` walk chunks."""
    if every == 1:
        return L.BT, L.chunk_grid, L.chunk_indices, L.chunk_offsets
    BT = every * L.BT
    if not L.varlen:
        return BT, (cdiv(L.T, BT), L.chunk_grid[1]), None, None
    indices, offsets = chunk_tables(L.cu_seqlens, BT, L.T)  # no sync: made where needed
    return BT, (indices.shape[0], L.H), indices, offsets


def _state_rows(L: _Layout, every: int) -> int:
    if every == 1:
        return L.n_chunks
    _, grid, _, _ = _output_chunks(L, every)
    return grid[0] * (1 if L.varlen else L.B)


def _rebuild_buffers(L: _Layout, k) -> tuple:
    """The rebuild's outputs: h_s, h_r (L.chunk_states) and the final states it writes but nobody reads."""
    return L.chunk_states(k), L.chunk_states(k), L.state(k), L.state(k)


def _rebuild_states(L: _Layout, k, g, u, w, S0, R0, beside: triton_utils.Beside | None = None, out=None,
                    crowded: bool = False):
    """The chunk-start states h_s, h_r (L.chunk_states) from the forward's U and W (keep_tokens): two linear walks
    in one launch (chunk_bwd._rdn_bwd_rebuild_kernel: RLA's walk with no rate, S's update split as the forward walk's,
    R's rounded); ``beside``: queued on its stream, into ``out`` (``_rebuild_buffers``, allocated before its fork);
    ``crowded``: beside the reverse walks (rebuild_width)."""
    beside = beside or triton_utils.Beside(k, False)
    sms = sm_count(k.device)
    BV = rebuild_width(L.K, L.V, L.width("WALK_BV", L.walk_BV), L.N * L.H, sms, crowded, k.dtype != torch.float32)
    BK, steps = rebuild_blocks(L.K, L.V, BV, L.N * L.H, sms, L.BT)
    h_s, h_r, *finals = out or _rebuild_buffers(L, k)
    with beside:
        _rdn_bwd_rebuild_kernel[(2 * cdiv(L.K, BK), cdiv(L.V, BV), L.N * L.H)](
            k, u, w, g, S0, R0, h_s, h_r, *finals, L.cu_seqlens, L.chunk_offsets, L.T,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=BK, BV=BV, DOT_PREC=L.dot_prec,
            DOTS_FP32=triton_utils.HALF_DOTS_IN_FP32 or k.dtype == torch.float32, HAS_S0=S0 is not None,
            HAS_R0=R0 is not None, IS_VARLEN=L.varlen, WALK_STEPS=steps, num_warps=REBUILD_WARPS, num_stages=2,
        )
    beside.use(k, u, w, g, S0, R0, h_s, h_r, *finals, L.cu_seqlens, L.chunk_offsets)
    return h_s, h_r


def trailed_walks(pairs: int, sms: int) -> bool:
    """Whether the reverse walks run as one launch, dS's trailing dR's (TRAILED_WALKS; 0 automatic): where both
    walks' ``pairs`` (V-block, sequence x head) programs fit on ``sms`` SMs at once, two an SM."""
    if TRAILED_WALKS not in (0, 1, 2):
        raise ValueError(f"launch knob TRAILED_WALKS must be 0 (automatic), 1 (two launches) or 2 (one launch, dS's "
                         f"walk trailing dR's); got {TRAILED_WALKS!r}")
    return TRAILED_WALKS == 2 or (TRAILED_WALKS == 0 and pairs <= sms)


def transposed_reverse_walks(BV: int, trailed: bool) -> tuple[bool, bool]:
    """Whether dR's and dS's reverse walks run transposed (DR_WALK_T, DS_WALK_T) at V-block width ``BV``, ``trailed``
    (one launch) or not."""
    for name, value in (("DR_WALK_T", DR_WALK_T), ("DS_WALK_T", DS_WALK_T)):
        if value not in (0, 1, 2):
            raise ValueError(f"launch knob {name} must be 0 (never), 1 (automatic) or 2 (always); got {value!r}")
    return DR_WALK_T == 2 or (DR_WALK_T == 1 and (trailed or BV > 16)), DS_WALK_T == 2


def _reverse_walk_grid(L: _Layout) -> tuple[int, tuple[int, int]]:
    """The reverse walks' V-block width and their (V-block, sequence x head) programs a walk."""
    BV = L.width("REVERSE_WALK_BV", L.reverse_walk_BV)
    return BV, (cdiv(L.V, BV), L.N * L.H)


def _reverse_walk(L: _Layout, q, k, g, beta, gamma, operators, x, do, dS_T, dR_T, h_ds, h_dr, dS0, dR0, dyr, dxc, dyv,
                  scale, walk_grid, trailed: bool):
    """The reverse walk (chunk_bwd.py): dR's walk (h_dr, dR0, dyr, dX), then dS's, which reads that dX (h_ds, dS0,
    dyv), as two launches or, ``trailed`` (trailed_walks), as one; ``operators``: ``_walk_operators``'s;
    ``walk_grid``: ``_reverse_walk_grid``'s."""
    k_b, k_c, p_b, q_b, p_c = operators
    BV, grid = walk_grid
    pairs = grid[0] * grid[1]
    dr_t, ds_t = transposed_reverse_walks(BV, trailed)
    if trailed:
        progress = torch.zeros(1 + pairs, dtype=torch.int32, device=q.device)
        _rdn_bwd_walks_kernel[(2 * pairs,)](
            q, k, g, beta, gamma, k_c, p_c, k_b, p_b, q_b, x, do, dR_T, dS_T,
            h_dr, dR0, dyr, dxc, h_ds, dS0, dyv, progress,
            L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.T, pairs,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=BV,
            RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, HAS_DRT=dR_T is not None, HAS_DST=dS_T is not None,
            IS_VARLEN=L.varlen, TRANSPOSED_R=dr_t, TRANSPOSED_S=ds_t, num_warps=WALK_WARPS,
            num_stages=REVERSE_WALK_STAGES,
        )
        return
    _rdn_bwd_walk_r_kernel[grid](
        q, k, g, gamma, k_c, p_c, x, do, dR_T,
        h_dr, dR0, dyr, dxc,
        L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, HAS_DRT=dR_T is not None, IS_VARLEN=L.varlen,
        TRANSPOSED=dr_t, num_warps=WALK_WARPS, num_stages=REVERSE_WALK_STAGES,
    )
    _rdn_bwd_walk_s_kernel[grid](
        q, k, g, beta, k_b, p_b, q_b, dxc, do, dS_T,
        h_ds, dS0, dyv,
        L.cu_seqlens, L.chunk_offsets, scale, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=BV,
        DOT_PREC=L.dot_prec, HAS_DST=dS_T is not None, IS_VARLEN=L.varlen,
        TRANSPOSED=ds_t, num_warps=WALK_WARPS, num_stages=REVERSE_WALK_STAGES,
    )


def backward_chunk(L: _Layout, chunk_size: int, tokens: bool, sms: int) -> int:
    """The backward's chunk size (BWD_CHUNK_SIZE; 0 automatic) given ``L``, its layout at min(chunk_size, 32) (or the
    knob's), the caller's ``chunk_size``, whether it takes the forward's kept ``tokens`` (U, W, X: per-token, so any
    chunking rebuilds its states from them; a rerun or a kept walk is at the forward's chunking) and the GPU's ``sms``
    (0 off a GPU: never 64 there unless asked)."""
    if BWD_CHUNK_SIZE or not tokens or chunk_size < 32:
        return L.BT
    _, (blocks, programs) = _reverse_walk_grid(L)
    return 64 if 0 < blocks * programs <= sms else L.BT


def chunk_rdn_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T,
                  *, chunk_size: int = CHUNK_SIZE, wy=None, walk=None):
    """Gradients ``(dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)``, each in its input's dtype (states fp32). ``do`` is
    taken in v's dtype (cast where it differs).

    ``dS_T``/``dR_T`` None mean the final states were not used; ``dS0``/``dR0`` are None when
    ``S0``/``R0`` are None. ``wy``: the forward's saved chunk matrices (``chunk_rdn_fwd(save_wy=True)``), used
    when they have this call's chunking (else, or when None or empty, recomputed). ``walk``: the forward walk's ``(h_s,
    h_r, U, W, X)`` (``chunk_rdn_fwd(keep_walk=True)``), used with ``wy`` (whose chunking it shares) when both fit this
    call, instead of rerunning the walk; or its ``(U, W, X)`` (``keep_tokens=True``), per-token and so of any chunking,
    from which, with ``wy`` or this call's own chunk matrices, two linear walks rebuild the chunk states
    (_rebuild_states) instead.
    """
    _check_chunk_size(chunk_size)
    if OVERLAP not in (0, 1):
        raise ValueError(f"launch knob OVERLAP must be 0 (the rebuild on the one stream) or 1 (beside the reverse "
                         f"walks where they are two launches); got {OVERLAP!r}")
    if BWD_CHUNK_SIZE not in (0, 16, 32, 64):
        raise ValueError(f"launch knob BWD_CHUNK_SIZE must be 16, 32, 64 or 0 (automatic); got {BWD_CHUNK_SIZE!r}")
    L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, min(chunk_size, BWD_CHUNK_SIZE or 32))
    # (the kept tokens' fit is read only where the chunk is chosen: the default knob takes no host work here)
    tokens = BWD_CHUNK_SIZE == 0 and walk is not None and len(walk) == 3 and _fits(walk, L, q, cu_seqlens)
    if BWD_CHUNK_SIZE == 0 and backward_chunk(L, chunk_size, tokens, sm_count(q.device)) != L.BT:
        L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, 64)
    if L.BT == 64 and q.dtype != torch.float32 and q.is_cuda and HALF_BWD_64 != 1:
        raise ValueError(f"launch knob BWD_CHUNK_SIZE={BWD_CHUNK_SIZE}: the backward at 64-token chunks is wrong for "
                         f"{q.dtype} inputs on the GPU (float64 check, 2026-12-08); use 32, or float32 inputs")
    if do.shape != v.shape:
        raise ValueError(f"do must have v's shape {tuple(v.shape)}; got {tuple(do.shape)}")
    for name, d in (("dS_T", dS_T), ("dR_T", dR_T)):
        if d is not None and tuple(d.shape) != (L.N, L.H, L.K, L.V):
            raise ValueError(f"{name} must be [N, H, K, V] = {[L.N, L.H, L.K, L.V]}; got {tuple(d.shape)}")
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T = _contiguous(q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T)
    do = do.to(v.dtype)  # the chunk-parallel kernels dot it raw with the token tensors, which are in v's dtype
    saved_wy = _is_wy(wy, k, L.BT)
    if saved_wy:
        t_beta, t_gamma, m_k = wy.contiguous().unbind(0)
    elif L.BT == 64 and _is_wy(wy, k, 32):
        t_beta, t_gamma, m_k = _widen_wy(L, k, g, beta, gamma, wy.contiguous())
    else:
        t_beta, t_gamma, m_k = _wy(L, k, g, beta, gamma)
    gates = walk_gates(g, beta, gamma)
    # U, W and X are per-token quantities, the same at any chunking: kept alone (keep_tokens) they serve a backward
    # that chunks otherwise than the forward did, with its own chunk matrices; a kept walk's states pin its chunking.
    kept = [t.contiguous() for t in walk] if _fits(walk, L, q, cu_seqlens) and (saved_wy or len(walk) == 3) else []
    rebuild = len(kept) == 3
    if len(kept) == 5:
        h_s, h_r, u, w, x = kept
    elif rebuild:
        u, w, x = kept
    else:
        h_s, h_r, u, w, x, _, _ = _walk(L, k, v, *gates, t_beta, t_gamma, m_k, S0, R0, True)
    operators = _walk_operators(L, q, k, g, t_beta, t_gamma, m_k)  # after the rerun: not live through it
    h_ds, h_dr = L.chunk_states(q), L.chunk_states(q)
    dS0, dR0 = L.state(q), L.state(q)
    dyr, dxc, dyv = (L.tokens(q) for _ in range(3))  # the reverse walk's adjoints (chunk_bwd.py)
    walk_grid = _reverse_walk_grid(L)
    trailed = trailed_walks(walk_grid[1][0] * walk_grid[1][1], sm_count(q.device))
    if rebuild:
        # Its outputs allocated before the fork (Beside says why), its stream forked before the walks (it needs
        # nothing they make) and the rebuild queued after them, so that the walks get their SMs first. Not beside
        # walks trailed in one launch: those need every SM's room for their own programs (OVERLAP says by how much).
        rebuilt = _rebuild_buffers(L, k)
        crowded = OVERLAP == 1 and not trailed
        beside = triton_utils.Beside(k, crowded)
    _reverse_walk(L, q, k, *gates, operators, x, do, dS_T, dR_T, h_ds, h_dr, dS0, dR0, dyr, dxc, dyv, scale,
                  walk_grid, trailed)
    if rebuild:
        h_s, h_r = _rebuild_states(L, k, gates[0], u, w, S0, R0, beside, rebuilt, crowded)
        del rebuilt
    del gates
    del m_k, t_beta, t_gamma, operators

    # The chunk-parallel kernels (chunk_bwd.py): the chunk matrices' per chunk, the gradient kernel per (chunk,
    # K-block), the rows' sums and dg's reverse cumsum per chunk.
    dv = torch.empty_like(v)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg, dbeta, dgamma = torch.empty_like(g), torch.empty_like(beta), torch.empty_like(gamma)
    if L.n_chunks:
        NTH = L.B * L.T * L.H
        BKB = triton_utils.knob_width("GRAD_BK", GRAD_BK, GRAD_BK, L.K)  # min(GRAD_BK, L.BK), validated
        NK = cdiv(L.K, BKB)
        mats = q.new_empty(2, L.B, L.T, L.H, L.BT, dtype=torch.float32)  # dkk + dkk^T and dqk a chunk
        rows_part = q.new_empty(4, NTH, dtype=torch.float32)  # the rows that read no state: dG, dGp, dbeta, dgamma
        _rdn_bwd_mats_kernel[L.chunk_grid](
            q, k, v, g, beta, gamma, x, do, u, w, dyr, dxc, dyv,
            mats, rows_part, dv,
            L.cu_seqlens, L.chunk_indices, scale, L.clip, L.T, NTH,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BKF=L.BK, BV=L.width("MATS_BV", 32), RESIDUAL=L.residual_code,
            DOT_PREC=L.dot_prec,
            IS_VARLEN=L.varlen, **L.order,
        )
        del x  # the rerun's X (or the kept one's reference): only the chunk-matrix kernel reads it
        if rebuild:
            beside.join()  # the rebuilt states, for the gradient kernel
        dg_part = q.new_empty(4, NK, NTH, dtype=torch.float32)  # dg's rows, -dGp, dbeta, dgamma a K-block
        _rdn_bwd_grad_kernel[(L.chunk_grid[0], NK, L.chunk_grid[1])](
            q, k, g, beta, gamma, h_s, h_r, h_ds, h_dr, do, u, w, dyr, dxc, dyv, mats, rows_part,
            dq, dk, dg_part,
            L.cu_seqlens, L.chunk_indices, scale, L.T, NTH,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=BKB, BV=L.width("GRAD_BV", 32), DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen,
            **L.order,
        )
        _rdn_bwd_dg_kernel[L.chunk_grid](
            dg_part, dg, dbeta, dgamma, L.cu_seqlens, L.chunk_indices, L.T, NTH,
            H=L.H, BT=L.BT, NK=NK, IS_VARLEN=L.varlen, **L.order, num_warps=1,
        )
    if rebuild:
        beside.join()  # (without chunks)
    return (dq, dk, dv, dg, dbeta, dgamma,
            None if S0 is None else dS0, None if R0 is None else dR0)

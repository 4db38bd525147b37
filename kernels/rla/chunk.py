"""Residual Linear Attention, training/prefill path: Triton chunk kernels, forward and backward.

The two entry points the API layer wraps in an autograd function (states fp32 [N, H, K, V]; S0/R0 None
mean zeros and then dS0/dR0 come back None):

    chunk_rla_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, *, keep_walk=False,
                  keep_tokens=False)
        -> (o, S_T, R_T), then walk with keep_walk, (r,) with keep_tokens
    chunk_rla_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T, *, walk=None)
        -> (dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)

Semantics are exactly ``naive.py``. The forward is chunk_fwd.py: a lean walk stores the chunk states of S,
the residuals come chunk-parallel from them, the same walk runs R over the residuals, and a chunk-parallel
output pass reads both. The backward reruns those passes instead of keeping their results alive between forward
and backward, then runs chunk_bwd.py the same way: one reverse walk for dh_R and dh_S that makes du on its way
(DU_WALK; or a lean walk for dh_R, du chunk-parallel from it and a lean walk for dh_S), dv chunk-parallel from dh_S,
and a chunk-parallel pass for dq, dk, dg.

What the forward hands the backward (the API layer, library.py): by default the residuals r (``keep_tokens``, one
[B, T, H, V] tensor in the input dtype, as large as v), so that the rerun is the two walks alone, not the residual
kernel (0.33-0.35 ms at every T of the benchmark, H200, 2026-12-02) nor h_S's lo buffer, and each chunk's decayed q.k
products (QK_KEPT, [B, T, H, BT]), so that the backward does not make them again. ``keep_walk`` (opt-in,
memory for time; the API's ``rla(recompute_states=False)``): also h_S (hi only: its lo part is read by the residual
kernel alone) and h_R (``kept_walk_shapes``), all in the input dtype, to ``chunk_rla_bwd(walk=)``, which then skips
the rerun (both walks and the residual kernel: 0.70 + 0.34 of the backward's ~3.6 ms at B=16 T=2k H=16 K=V=128 bf16,
H200, 2026-12-01, profile_kernels.py). The same kernels as the default forward, so the same numbers; its walks store
every chunk's state where the default's store every other one (FWD_HALVES), and the buffers live on, 2 x n_chunks x H
x K x V plus B x T x H x (V + BT) elements (0.7 GB a layer at that shape).
"""
from __future__ import annotations

import functools
import math

import torch

from .. import shapes
from ..triton_utils import (GRID_AXIS_LIMIT, HALF_DOTS_IN_FP32, Beside, beside_walk_width, cdiv, chunk_tables,
                           dot_precision, knob_steps, knob_width, next_power_of_2, rows_descriptors, sm_count,
                           walk_gates, wide_reverse_walk)
from .chunk_bwd import (_dstate_walk_kernel, _rla_bwd_dqkg_kernel, _rla_bwd_du_kernel, _rla_bwd_du_walk_kernel,
                        _rla_bwd_dv_kernel, _rla_bwd_intra_kernel, _rla_bwd_sums_kernel)
from .chunk_fwd import (_rerun_walk_kernel, _residual_walk_kernel, _rla_fwd_output_kernel, _rla_residual_kernel,
                        _state_walk_kernel)
from .fused_recurrent import _RESIDUAL_CLIP, _RESIDUAL_IDENTITY, _RESIDUAL_TANH, _check_inputs

CHUNK_SIZE = shapes.RLA_CHUNK_SIZE
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SUMS_BLOCK = 1024  # gates a program of the backward's final partial-sum kernel
# Launch knobs: block widths, module ints that profile_kernels.py --knob NAME=V1,V2 and gpu_check_rla.py --set NAME=V
# change (as RDN's, rdn/chunk.py). 0, every default, is the launcher's own choice (_Layout says which and why); else a
# power of two >= 16, clamped to the head dim's power of two (triton_utils.knob_width; anything else is a ValueError).
# Every kernel masks partial blocks, so any such width works (tests/kernels/test_rla_chunk_triton.py, float64 oracle).
# Timed at B=16 T=2k H=16 K=V=128 bf16 (H200, Triton 3.6, 2026-12-01 19:29-23:11, profile_kernels.py --tune --knob):
# the automatic widths below are the winners (docs/next/rla-width-knobs.md had the sweep). K-blocks of the kernels that
# hold all of K (the residual, output, du, dv and intra kernels) are no knob: they are K's power of two.
WALK_BK = 0  # the forward walks (S, then R over the residuals; the backward's rerun too): K-block, auto 128 (bf16/fp16,
WALK_BV = 0  # K <= 128) where that fills the GPU, else 64; V-block auto 32 (16 where the programs would not fill it)
REVERSE_WALK_BK = 0  # the backward's walks (dh_R', then dh_S'): auto 128 (bf16/fp16, K <= 128) where that fills the
REVERSE_WALK_BV = 0  # GPU, else as the forward walks'; V-block auto 64 where 64-wide programs outnumber the SMs (the
#                      same inputs), else as the forward walks'
RES_BV = 0  # the residual kernel's V-block: auto 128 (bf16/fp16, K <= 128), else 64
OUT_BV = 0  # the output kernel's V-block: auto 64
GRAD_BV = 0  # dv's V-block: auto 128 (bf16/fp16, K <= 128), 64 (K > 128), 32 (fp32 inputs)
DU_BV = 0  # du's V-block: auto 64 (32 for fp32 inputs)
INTRA_BV = 0  # the intra kernel's V-loop block (M, Mk): auto 64 (32 for fp32 inputs)
DQKG_BK = 0  # the dq/dk/dg kernel's K-block (one program each): auto 64
DQKG_BV = 0  # and its V-loop block: auto 32 (64 for bf16/fp16 at K > 128)
DU_WALK_BV = 0  # the one reverse walk's V-block (DU_WALK 1; all of K a program): auto 32, 16 at low parallelism or fp32
RERUN_WALK_BK = 0  # the backward's one rerun walk (RERUN_WALK 1): K-block, auto the forward walks'; V-block auto the
RERUN_WALK_BV = 0  # widest of 64, 32 whose programs are at least half the SMs (bf16/fp16, K <= 128), else the forward's
LAUNCH_KNOBS = ("WALK_BK", "WALK_BV", "REVERSE_WALK_BK", "REVERSE_WALK_BV", "RES_BV", "OUT_BV", "GRAD_BV", "INTRA_BV",
                "DQKG_BK", "DQKG_BV", "DU_BV", "DU_WALK_BV", "RERUN_WALK_BK", "RERUN_WALK_BV", "RES_WALK_BV")
# Chunks a walk (forward and reverse) steps per loop turn: 0 automatic, or 1 or 2. Not a width, so not in LAUNCH_KNOBS
# (its users validate widths), but set by name the same way (--knob WALK_STEPS=1,2, --set WALK_STEPS=2). With 2 a turn
# issues two 64-token chunks' loads and dots together (only the carry h <- exp(G_L) h + update is sequential); each
# step's arithmetic is the same either way, at twice the shared memory a program. Auto (H200, 2026-12-02, ms a walk
# call, profile_kernels.py --knob WALK_STEPS=1,2): the forward walks take 2 where their programs are fewer than two an
# SM (256 at B=1 T=32k 1.87 -> 1.66, B=2 T=16k 1.11 -> 1.00, B=4 T=8k 0.71 -> 0.65; 1024 at B=16 T=2k 0.49 -> 0.70),
# the reverse walks only where their programs leave SMs idle (their 16-wide V-blocks: B=1 T=32k 1.62 -> 1.55; B=2
# T=16k 0.92 -> 0.91, B=4 T=8k 0.61 -> 0.81, B=16 T=2k 0.52 -> 0.84).
WALK_STEPS = 0
# 1: the backward's rerun walks (the residuals kept), read by the dq/dk/dg kernel alone, run on a second stream
# (triton_utils.Beside) beside dh's walks and the du, dv and intra kernels; 0: on the one stream. Backward ms at H=16
# K=V=128 bf16 (H200, Triton 3.6, 2026-12-02 12:12, autotuned): B=1 T=32k 4.56 -> 4.30, B=2 T=16k 3.58 -> 3.32,
# B=16 T=2k 2.94 -> 2.92 (queued after dh_R's walk instead: 4.30, 3.31, 3.19).
# 2 (the default since 2026-12-05 18:51): also the intra kernel (M, Mk and gamma's in-chunk term: it needs du alone),
# queued on that stream right after the du kernel, beside dh_S's walk and the dv kernel, where 0 and 1 run it after
# dv. Backward wall ms 1 -> 2 (H100, Triton 3.6, autotuned, one warm machine, `profile_kernels.py --ops rla --wall
# --tune --knob OVERLAP=1,2`): B=16 T=2k 3.163 -> 3.120, B=1 T=32k 4.409 -> 4.198. Less than the intra kernel's 0.33
# ms at 2k (expected -0.1 to -0.2): beside the walk it ran 0.38 of GPU time, the SMs already busy with dh_S's walk,
# the rerun walks and dv; at 32k the dS walk's 128 programs leave more room.
OVERLAP = 2
# The order of the chunk-parallel kernels' programs (chunk_fwd._chunk_program has both): 0 the grid's own (a chunk's
# V- or K-blocks together, then one head's chunks after another's), 1 one chunk's heads after another's, its blocks
# still together. Why: RDN's chunk-parallel kernels ran 6-16% slower on packed batches (every sequence's chunks of one
# head on the chunk axis) and long sequences than at B=16 T=2k with the same code, and one chunk's heads first took
# most of that back (rdn/chunk.py, CHUNK_ORDER). RLA the same (H200, Triton 3.6, H=16 K=V=128 bf16, first configs,
# `profile_kernels.py --ops rla --wall [--packed equal] --knob CHUNK_ORDER=0,1`, 2026-12-03 22:23), 0 -> 1, wall ms:
# packed B=16 T=2k (equal lengths) forward 1.45 -> 1.42, backward 3.27 -> 3.07 (dq/dk/dg 1.21 -> 1.07); B=1 T=32k
# 2.84 -> 2.80, 4.85 -> 4.70; B=16 T=2k 1.32 -> 1.31, 2.95 -> 2.96 (there both orders run nearly the same programs).
CHUNK_ORDER = 1
# 1: the walks (S's and R's forward walks, their rerun, the reverse walks dh_R', dh_S') take g, beta and gamma in fp32
# (triton_utils.walk_gates), so that the pipeliner prefetches their per-step loads; 0: as given (the layers pass beta
# and gamma in the model's dtype). 1 since 2026-12-04, after RDN's walks gained from it at B=1 T=32k (rdn/chunk.py), and
# because fp32 gates are what gpu_check_rla.py's float64 check and `bench kernels` run: with 1 the layers' calls run
# the walks those checked and timed. Half gates were slower (H100, 2026-12-05 16:22, first configs, forward ms at
# B=16 T=2k 1.462 -> 1.553, at B=1 T=32k 2.091 -> 2.893: the walks' gate loads not prefetched, as RDN's).
WALK_GATES = 1
# Walk chunks a program of the forward's residual and output kernels takes: 2 (chunk pairs) or 1. With 2 a program
# reads the S and R states at its first chunk alone and answers the second chunk's queries with the first's tokens as
# keys (chunk_fwd.py: the residual and output kernels), so the forward walks store every other state (h_S with its lo
# part), and the two kernels read half the state bytes, for one more [BT, BT] block of dots. Why: at B=16 T=2k H=16
# K=V=128 bf16 the chunk states are about half of the forward's DRAM traffic (~225 of ~450 KB a chunk and head:
# the walks' stores, the residual kernel's hi + lo reads, the output kernel's h_S and h_R). Both kernels take pairs
# whatever the walks stored (a kept walk, the backward's reruns: every state), so r and o are the same bits either way
# (the same autotuned config too: chunk_fwd.py's keys leave STATE_EVERY out).
FWD_HALVES = 2
# 1: the backward's dh_R' and dh_S' come from one reverse walk that carries both and makes du (and the residual's
# dgamma share) from the carried dh_R' in each chunk's step (chunk_bwd._rla_bwd_du_walk_kernel); 0: dh_R's walk, the
# chunk-parallel du kernel, then dh_S's walk (three launches one after another on the critical path); 2 (default): 1
# unless its programs at 32 wide would be fewer than the SMs (_Layout.duwalk_few) with nothing beside it (the
# residuals kept, OVERLAP >= 1: the rerun walks run beside it). The values agree within rounding either way (du from
# dh_R' rounded as stored, dh_S from du as stored), not bit for bit: the dots differ in shape (H100, 2026-12-06), so at
# 2 OVERLAP can change the bits where programs are few; DU_WALK_WARPS: its launch's warps (4 or 8; 8 lost: 0.72 ->
# 1.03-1.33 ms).
# Why: at B=16 T=2k H=16 K=V=128 bf16 the two walks took ~0.68 ms and du 0.47 between them, each walk's chain one dot a
# chunk; one walk does du's work beside its chain and reads q, k and do once. Expected 1.1 ms as one walk of ~0.6;
# measured 0.72 (H100, Triton 3.6, 2026-12-05 21:45, `profile_kernels.py --ops rla --wall --tune --keep-walk --knob
# DU_WALK=0,1 --knob DU_WALK_BV=16,32`), backward wall ms 0 -> 1 (32 wide; 16 at 32k):
#   B=16 T=2k 3.067 -> 2.923, walk kept 2.615 -> 2.438; B=2 T=16k 3.251 -> 3.207, kept 2.827 -> 2.881;
#   B=1 T=32k 4.153 -> 4.006, kept 3.325 -> 3.648.
# Where programs are few (one an SM: 16k and 32k) the one walk's step is about the two walks' steps end to end, so it
# gains only where the rerun walks beside it fill the SMs (and the intra kernel, which needs du, then runs beside dv
# instead of beside dh_S's walk): hence 2.
DU_WALK = 2
DU_WALK_WARPS = 4
# 1: the backward's rerun of the S and R walks (the residuals kept) as one walk carrying both states, each chunk's k^T
# and decays loaded once (chunk_fwd._rerun_walk_kernel); 0: two launches of the forward's walk. Why: the rerun runs
# beside the reverse walk and takes SM time from it (B=16 T=2k, H100: backward wall 2.92 ms against 2.44 with the walk
# kept, the rerun's two walks 0.71 ms of GPU time); one walk issues fewer instructions for the same states (static loop
# 569 + 400 -> 671 SASS at 2k, Triton 3.6). Measured 0 -> 1 (H200, Triton 3.6, 2026-12-05 22:42, autotuned,
# `profile_kernels.py --ops rla --wall --tune --knob RERUN_WALK=0,1`), backward wall ms (the rerun's GPU ms):
# B=16 T=2k 2.670 -> 2.581 (0.587 -> 0.499), B=1 T=32k 3.888 -> 3.819 (2.379 -> 1.445).
RERUN_WALK = 1
# 1: a forward that keeps its residuals for the backward (keep_tokens, keep_walk) keeps each chunk's decayed q.k
# products too, A_ti = [i <= t] exp(G_t - G_i) (q_t.k_i), [B, T, H, BT] in the dots' dtype (shapes.rla_qk_dtype),
# stored by the output kernel's first V-block as it makes them for the in-chunk term; the one reverse walk (or the du
# kernel) and the dv kernel load them where they made them again, each from a [BT, K] x [K, BT] dot and a [BT, BT]
# decay mask (the walk once a V-block program: 4 times a chunk and head at 32 wide, 8 at 16). The same products
# rounded the same way (only the fp32 sum's order may differ). Costs BT / V of v's bytes a token kept between
# forward and backward (half of v at K=V=128, BT 64: 67 MB a layer at B=16 T=2k H=16 bf16). 0: not kept (the
# backward makes them, as before 2026-12-06; a profiling knob: library.py's fakes size the saved outputs at 1).
# Expected (written before any measurement, H100, H=16 K=V=128 bf16): at B=16 T=2k the du walk 0.73 -> ~0.62 ms (its
# step's k q^T dot, ~1/3 of its MACs at 32 wide, gone), dv 0.47 -> ~0.42, the output kernel +0.02-0.03 (the stores);
# at B=1 T=32k the walk 2.1 -> ~1.7 (~1/2 of its MACs at 16 wide), backward wall ~-0.3. Measured 0 -> 1 (H100, Triton
# 3.6, 2026-12-06 04:08, `profile_kernels.py --ops rla --wall --tune --knob QK_KEPT=0,1`): B=16 T=2k walk 0.731 ->
# 0.672, dv 0.464 -> 0.409, output 0.501 -> 0.530, backward wall 2.819 -> 2.710, forward 1.406 -> 1.448; B=1 T=32k
# walk 2.207 -> 1.587, backward wall 3.966 -> 3.450, forward 2.045 -> 2.083.
QK_KEPT = 1
# 1: the output kernel's q.k store (QK_KEPT) behind a branch on its V-block, so that the programs of the other
# V-blocks skip its conversion and layout change instead of running them into a store masked off; 0: a masked store
# in every program. Expected (written before any measurement, 2026-12-07 08:30): the output kernel 0.530 -> ~0.515 ms
# at B=16 T=2k H=16 K=V=128 bf16 (QK_KEPT took it 0.501 -> 0.530); ptxas (Triton 3.6): its spill stack 184 -> 168 B
# at 4 warps, 352 -> 288 at 8, static SASS 3944 -> 3976 (both paths in the code, one taken a program). Measured 0 -> 1
# (H100, 2026-12-07 07:56, `profile_kernels.py --ops rla --wall --tune --knob QK_STORE_IF=0,1`), the output kernel's
# GPU ms: B=16 T=2k 0.530 -> 0.515 (forward wall 1.268 -> 1.259), B=2 T=16k 0.530 -> 0.514 (1.485 -> 1.471).
QK_STORE_IF = 1
# 1: the forward walks (S's, R's) load their k and value tiles through TMA descriptors (chunk_fwd._walk_step; their
# rows past a sequence's end, the next one's tokens, meet a rate of 0 there) where the layout allows
# (_walk_descriptors); 0: by pointers. Why: a walk's time is its step's instructions times ~7 cycles (ncu, 2026-12-04),
# and the masked loads' address arithmetic is part of every step (ptxas, Triton 3.6: S's walk loop 620 -> 573 SASS
# instructions at B=16 T=2k, 576 -> 545 at B=1 T=32k). Forward wall ms 0 -> 1 (H100, 2026-12-06 14:47,
# `profile_kernels.py --ops rla --wall --tune --knob WALK_TMA=0,1`): B=16 T=2k 1.437 -> 1.403 (both walks 0.466 ->
# 0.428 ms of GPU time), B=1 T=32k 2.062 -> 1.989 (1.122 -> 1.038). The output and residual kernels through TMA lost
# in the same run (0.533 -> 0.594 and 0.410 -> 0.442 ms at 32k, as much at 2k; docs/next/README.md, Ideas): with
# no loop to pipeline, TMA's round trip stands where the LDGs' did.
WALK_TMA = 1
# 1 (automatic): the forward's S and R walks, for half inputs, where they store the states of chunk pairs alone
# (FWD_HALVES 2, no walk kept), step a chunk pair at a time: one [BK, 2 BT] x [2 BT, BV] dot, one set of gates and
# loads for 2 BT tokens, the pair's start state stored at every step (the same rows as STATE_EVERY 2 at the walk's
# chunk); 0: chunk by chunk; 2: pairs for fp32 inputs too (their tiles take the walk past its registers: ptxas has a
# 488-byte spill stack at B=1 T=32k H=16 K=64, 120 at B=16 T=2k, where chunk steps spill none). The states are
# the same sums (h <- exp(G_L) h + (k exp(G_L - G) rate)^T x over the pair's tokens) in another fp32 order. Why: at
# B=1 T=32k the two walks are 1.04 ms of the forward's ~1.94 (H100, 2026-12-06), their steps off any dot chain
# (WALK_STEPS 2 already issues two chunks' dots beside each other), so a step's time is its instructions: loads'
# address arithmetic, the gates' cumsum and exps, the dot's issue and the store, each once a pair instead of twice.
# ptxas (Triton 3.6, B=1 T=32k, 64 x 16 blocks, two steps a loop turn): S's loop 545 SASS for two chunks -> 794 for two
# pairs (-27% a token), R's 455 -> 602 (-34%); registers 70 -> 123 and 66 -> 96, shared 42 -> 84 KB (two programs an
# SM still). Expected (written before any measurement, 2026-12-07 08:10): the two walks 1.04 -> ~0.75 ms of GPU time
# at B=1 T=32k, RLA fwd+bwd there 5.15 -> ~4.85 ms; no other bench shape runs these walks (RES_WALK's one walk).
# Measured 0 -> 1 (H100, 2026-12-07 08:15, `profile_kernels.py --ops rla --wall --tune --knob WALK_PAIRS=0,1`): the
# two walks 1.045 -> 0.740 ms, forward wall 1.958 -> 1.680 at B=1 T=32k; the bench's RLA fwd+bwd there 4.85-4.87 ms
# (5.15 before, on another H100). A kept walk (keep_walk: every chunk's state) still steps chunk by chunk, so its
# forward is within rounding of the default's, not bit for bit.
WALK_PAIRS = 1
# RES_WALK's one walk stepping chunk pairs where it stores pairs' states alone, as WALK_PAIRS does for the lean walks,
# u's in-chunk sums w made at a pair's chunk (the residual kernel's IN_CHUNK pass at 2 BT): 0 (automatic) where the
# walk is 16 wide, 1 never (chunk by chunk), 2 always. Why: the walk's step is its chain (RES_WALK's comment), and a
# pair's step issues fewer instructions a token: ptxas (Triton 3.6), its loop 778 SASS a chunk -> 1269 a pair at 16
# wide (B=2 T=16k; 211 registers, 92 KB shared, no spill: two programs an SM still), but at 32 wide (B=16 T=2k) 1160
# -> 1908 with a 136-byte spill stack and 116 KB shared (one program an SM). Automatic for half inputs alone, as
# WALK_PAIRS (fp32 tiles: twice the registers and shared bytes). Measured 1 -> 2 (H100, 2026-12-07 08:30,
# `profile_kernels.py --ops rla --wall --tune --knob RES_WALK_PAIRS=...`, forward wall ms, the walk + w's pass GPU
# ms): B=2 T=16k 1.464 -> 1.417 (0.710 + 0.221 -> 0.566 + 0.292), B=16 T=2k 1.256 -> 1.477 (0.491 + 0.223 -> 0.631 +
# 0.292); the bench's RLA fwd+bwd at 16k 4.15 -> 4.08 ms. Float64 (bf16 rows, RES_WALK=2 forced): 5/5.
RES_WALK_PAIRS = 0
# V-block of RES_WALK's w pass (u's in-chunk sums, the residual kernel's IN_CHUNK pass): 0 automatic (all of V, at
# most 128, for bf16/fp16 at K <= 128; else the residual kernel's RES_BV), or a power of two >= 16. Each V-block
# program makes the chunk's [BT, BT] k.k^T itself, so a wider block makes it fewer times. ptxas (Triton 3.6, 8 warps):
# 1008 -> 1120 SASS a program at B=16 T=2k, 1736 -> 1888 at B=2 T=16k (pairs), no spill. Expected: the pass -30 to
# -40%. Measured (H100, 2026-12-07 11:51, `profile_kernels.py --ops rla --wall --tune --knob W_BV=64,128`, GPU ms):
# B=16 T=2k the pass 0.224 -> 0.180, forward wall 1.259 -> 1.223; B=2 T=16k (pairs) 0.293 -> 0.293, wall even.
W_BV = 0
# 1: the one reverse walk (DU_WALK) loads its q, k, do, r and kept q.k tiles through TMA descriptors where the layout
# allows (_du_walk_descriptors; rows past a sequence's end are the next one's tokens: gamma of 0 there weighs every
# term they reach but dh_S's q do^T, whose weight the step masks); 0: by pointers. Expected (written before any
# measurement, 2026-12-06 18:40, after the forward walks' -8% and the rerun walk's +10% at 2k / -5% at 32k through
# TMA): the walk -3 to -8% of its GPU time (0.71 -> ~0.67 ms at B=16 T=2k, 1.90 -> ~1.78 at B=1 T=32k, where it is
# the backward's critical path: wall ~-0.1). Measured 0 -> 1 (H100, 2026-12-06 18:26, `profile_kernels.py --ops rla
# --wall --tune --knob DU_TMA=0,1`), the walk's GPU ms (backward wall): B=16 T=2k 0.656 -> 0.591 (2.661 -> 2.618),
# B=2 T=16k 1.092 -> 0.983 (2.839 -> 2.745), B=1 T=32k 1.944 -> 1.768 (3.350 -> 3.169); ptxas (Triton 3.6): its loop
# 1144 -> 1103 SASS instructions at 2k, 855 -> 796 at 32k, LDG 60 -> 12. (The rerun walk through TMA, measured the
# same day, lost at 2k and was even on the wall at 32k: docs/next/README.md, Ideas.)
DU_TMA = 1
# 2: the forward's S walk, residual kernel and R walk as one walk (chunk_fwd._residual_walk_kernel: each program carries
# S and R for all of K and one V-block and makes its chunks' residuals between them, u's in-chunk sum w coming from a
# chunk-parallel pass before it, the residual kernel's IN_CHUNK); 1: three passes; 0 (automatic, the default): 2 where
# 32-wide (sequence x head, V-block) programs are at least half the SMs, for bf16/fp16 at K <= 128 (_Layout.res_walk),
# else 1. Expected (written before any measurement, 2026-12-06 21:40): at B=1 T=32k H=16 K=V=128 bf16 the forward
# 1.99 -> ~1.5-1.6 ms (its two walks' latency-bound chains, 1.03 ms, with the residual kernel's 0.41 between them, as
# one chain of S's FMA), at B=16 T=2k a loss (each V-block program makes u's K x BV dots that the residual kernel
# shares). Measured the other way round (H100, Triton 3.6, 2026-12-06 21:49, `profile_kernels.py --ops rla --wall
# --tune --knob RES_WALK=1,2`), forward wall ms 1 -> 2 (the walks + residual kernel -> the walk + w's pass, GPU ms):
# B=16 T=2k 1.407 -> **1.312** (0.437 + 0.415 -> 0.526 + 0.224), B=4 T=8k 1.390 -> **1.305**, B=2 T=16k 1.571 -> 1.590
# (1.037 -> 0.805 + 0.224), B=1 T=32k 2.002 -> 2.099 (1.444 -> 1.272 + 0.221). Where programs fill the GPU the one
# walk does the three passes' work with fewer bytes (no h_S lo, no residual round trip, k loaded once); where they are
# few its longer step (782 SASS a chunk at 16 wide against ~270 for each of the two walks, ptxas) is the chain.
# Float64 with 2: 10/10 (that call). The rule took "at least the SMs" until the walk went through TMA (RES_WALK_TMA,
# -7% of it); "at least half" since, which of the bench's shapes moves only B=2 T=16k (128 programs on 132 SMs) to the
# one walk, 16 wide. Expected 1.57 -> ~1.52 ms forward wall there; measured (H100, 2026-12-07 07:56, `--knob
# RES_WALK=1,0`) 1.563 -> 1.485 (the three passes' walks + residual kernel 1.028 GPU ms -> the walk + w's pass 0.912),
# the bench's RLA fwd+bwd at 16k 4.31 -> 4.17 ms.
RES_WALK = 0
RES_WALK_BV = 0  # its V-block: auto 16 (32 where 16-wide programs would outnumber the SMs twice)
# 1: RES_WALK's one walk loads k, v and w through TMA descriptors where the layout allows
# (_residual_walk_descriptors); 0: by pointers. Expected (written before any measurement, 2026-12-06 22:20, after the
# lean walks' -8% (WALK_TMA) and RDN's transposed walk's -14%): the walk 0.526 -> ~0.49 ms at B=16 T=2k; ptxas
# (Triton 3.6) had its loop 1148 -> 1160 SASS, LDG 34 -> 6. Measured 0 -> 1 (H100, 2026-12-06 22:26, first configs,
# `profile_kernels.py --ops rla --wall --knob RES_WALK_TMA=0,1`), forward wall ms (the walk's GPU ms): B=16 T=2k 1.318
# -> 1.279 (0.529 -> 0.493), B=4 T=8k 1.321 -> 1.262 (0.543 -> 0.476). Float64 (bf16 rows, RES_WALK=2): 5/5.
RES_WALK_TMA = 1


class _Layout:
    """Shapes, launch geometry and varlen bookkeeping shared by every kernel of one call."""

    def __init__(self, q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size):
        N = _check_inputs(q, q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, False)
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.N = N
        if q.dtype not in _DTYPES:
            raise ValueError(f"q, k, v must be float32, bfloat16 or float16; got {q.dtype}")
        if self.K > 256:
            raise ValueError(f"head dim K must be at most 256 (a chunk kernel holds all of K); got {self.K}")
        if chunk_size not in (16, 32, 64, 128):
            raise ValueError(f"chunk_size must be 16, 32, 64 or 128; got {chunk_size}")
        self.BT = chunk_size
        self.BK = max(16, next_power_of_2(self.K))
        # New widths were timed with bf16 inputs at K=128 (the header's date): fp32 inputs and K > 128 keep the
        # widths of before, sized for fp32 tiles' shared memory (with fp32 tiles a 64-wide dq/dk/dg V-block would
        # need ~224 KiB at K=128; H100: 227 KiB) and for a [K, BV] fp32 tile in registers.
        half = q.dtype != torch.float32
        wide = half and self.K <= 128
        # The walks split K and V (rows and columns of a state never mix): the forward walks 128 x 32 blocks where
        # (sequence, head, V-block) programs fill the GPU (bf16/fp16, K <= 128: 0.55 -> 0.49 ms at B=16 T=2k, H200,
        # 2026-12-01 23:11, since the walks load k^T as fla's fwd_h does; 0.70 -> 0.76 before), else 64 x 32, or
        # 64 x 16 when that still leaves SMs idle (batch-1 prefill), for programs enough to walk in parallel (and
        # WALK_STEPS: where a walk takes two chunks a loop turn).
        wide_bk = 128 if wide else 64
        self.BK_walk, self.BV_walk, _, self.walk_grid = self._walk_blocks("WALK_BK", "WALK_BV", wide_bk, q.device)
        # The reverse walks at one 128-wide K-block (dh_R', dh_S' rows read once a chunk): 0.67 -> 0.61 ms at B=16
        # T=2k (H200, 2026-12-01 19:40; 0.53 -> 0.52 in fwd_h form, 23:11); only where (sequence, head, 32-wide
        # V-block) programs still fill the GPU (B=1 T=32k: 64 1.72 ms, 128 1.99).
        # Their V-blocks 64 wide where those programs still outnumber the SMs (bf16/fp16, K <= 128; RDN's reverse
        # walks do the same): backward 3.04 -> 2.96 ms at B=16 T=2k, 3.09 -> 3.00 at B=8 T=4k (dh walks 0.64 -> 0.52,
        # 0.73 -> 0.56; H200, Triton 3.6, 2026-12-02 19:36, RLA_KERNELS_FIXED_CONFIG=1 profile_kernels.py --ops rla
        # --wall --knob REVERSE_WALK_BV=32,64). The forward walks lose at 64 (0.53 -> 0.56 ms at 2k): they keep 32.
        self.BK_dwalk, self.BV_dwalk, dwalk_idle, self.dwalk_grid = self._walk_blocks(
            "REVERSE_WALK_BK", "REVERSE_WALK_BV", wide_bk, q.device, wide_bv=wide)
        steps = knob_steps("WALK_STEPS", WALK_STEPS)
        few = math.prod(self.walk_grid) < 2 * sm_count(q.device)
        self.walk_steps, self.dwalk_steps = steps or (2 if few else 1), steps or (2 if dwalk_idle else 1)
        # The backward's rerun walk and the one reverse walk, where they run beside each other (the default), take one
        # chunk a turn even where either's programs alone would be few: two steps a turn cost each walk twice the
        # shared memory, and beside each other their programs are no longer few. Backward wall ms at auto -> 1 (H100,
        # Triton 3.6, 2026-12-06 04:19, `profile_kernels.py --ops rla --wall --tune --knob WALK_STEPS=0,1,2`): B=2
        # T=16k 3.071 -> 2.953 (the rerun 1.29 -> 0.84 ms of GPU time, dv beside it 0.67 -> 0.39, the reverse walk
        # 0.95 -> 1.19), B=1 T=32k 3.445 -> 3.453 (even); the forward walks keep two steps there (16k 1.617 -> 1.729).
        self.beside_steps = steps or 1
        self.BK_rerun, self.BV_rerun, self.rerun_grid = self._rerun_blocks(wide, q.device)
        if FWD_HALVES not in (1, 2):
            raise ValueError(f"launch knob FWD_HALVES must be 1 (a chunk a program) or 2 (chunk pairs); got "
                             f"{FWD_HALVES!r}")
        # Pairs hold two chunks' q and k tiles: fp32 ones at K = 128 asked 288 KiB of shared memory of the output
        # kernel (H100, 2026-12-05); there, at K > 128 and at 128-token chunks (never run at pairs on a GPU), a chunk
        # a program.
        self.halves = FWD_HALVES if (wide or self.K <= 64) and self.BT <= 64 else 1
        V2 = max(16, next_power_of_2(self.V))
        # residual kernel 0.348 -> 0.334 ms at 128 wide (one V-block at V=128); the output kernel is slower there
        # (0.46 -> 0.52). At chunk pairs (FWD_HALVES 2) 64: 0.544 -> 0.411 ms at B=16 T=2k (H100, 2026-12-05 16:40,
        # autotuned; the pair's second chunk holds two more [BT, BT] blocks and its own tiles beside the state's).
        self.BV_res = self._knob("RES_BV", min(128 if wide and self.halves == 1 else 64, V2), self.V)
        self.BV_out = self._knob("OUT_BV", min(64, V2), self.V)
        # RES_WALK's w pass makes the chunk's k.k^T in each V-block program: one 128-wide block makes it once (W_BV).
        self.BV_wpass = self._knob("W_BV", min(128, V2) if wide else self.BV_res, self.V)
        # The dq/dk/dg pass splits K (see chunk_bwd.py) and pipelines its V loop: 32-wide V turns (4 at V=128) take
        # 1.20 -> 1.00 ms against 64 (2 turns, never a steady pipeline); one 128-wide K-block 1.47-1.72 (8 warps).
        self.BK_par = self._knob("DQKG_BK", min(64, self.BK), self.K)
        self.BV_dqkg = self._knob("DQKG_BV", min(32 if wide or not half else 64, V2), self.V)
        # du and dv hold a [K, BV] adjoint beside q and k [BT, K] and five [BT, BV] tiles, about what the output
        # kernel holds: with bf16 one 128-wide V-block takes dv 0.49 -> 0.38 ms (du 0.31 -> 0.32); fp32: 32.
        # The intra kernel loops over V-blocks: 64 (32 was 0.25 -> 0.26 ms).
        self.BV_grad = self._knob("GRAD_BV", min(128 if wide else 64 if half else 32, V2), self.V)
        # du alone is faster 64 wide, the intra kernel's width: 0.325 -> 0.310 ms (H200, 2026-12-01 22:58)
        narrow_bv = min(64 if half else 32, V2)
        self.BV_du = self._knob("DU_BV", narrow_bv, self.V)
        # The one reverse walk (DU_WALK) holds all of K (du sums over it) and two [K, BV] fp32 gradients: 32 wide, or
        # 16 where (sequence x head, V-block) programs at 32 would leave half the SMs idle (B=1 T=32k: 4.049 -> 4.006
        # ms backward wall; B=2 T=16k, 128 programs at 32, lost at 16: 3.207 -> 3.521); two chunks a loop turn where
        # its programs are fewer than the SMs. fp32 inputs: 16 (their q and k tiles take twice the shared memory).
        sms = sm_count(q.device)
        programs_32 = self.N * self.H * cdiv(self.V, 32)
        self.duwalk_few = programs_32 < sms
        du_walk_bv = 16 if 2 * programs_32 < sms or not half else 32
        self.BV_duwalk = self._knob("DU_WALK_BV", min(du_walk_bv, V2), self.V)
        self.duwalk_grid = (cdiv(self.V, self.BV_duwalk), self.N * self.H)
        self.duwalk_steps = steps or (2 if math.prod(self.duwalk_grid) < sms else 1)
        self.BV_intra = self._knob("INTRA_BV", narrow_bv, self.V)
        # RES_WALK's one walk holds all of K (a column of r reads a column of S over all of K) and S and R: 16 wide, 32
        # where 16-wide programs would be more than two an SM. Automatic only where it was timed (bf16/fp16, K <= 128):
        # fp32 tiles or a 256-row state would take it past the registers the lean walks fit in.
        if RES_WALK not in (0, 1, 2):
            raise ValueError(f"launch knob RES_WALK must be 0 (automatic), 1 (S's walk, the residual kernel, R's walk) "
                             f"or 2 (one walk making the residuals); got {RES_WALK!r}")
        self.res_walk = RES_WALK == 2 or (RES_WALK == 0 and wide and 2 * programs_32 >= sms and sms > 0)
        res_walk_bv = 32 if self.N * self.H * cdiv(self.V, 16) > 2 * sms else 16
        self.BV_reswalk = self._knob("RES_WALK_BV", min(res_walk_bv, V2), self.V)
        self.reswalk_grid = (cdiv(self.V, self.BV_reswalk), self.N * self.H)
        # Whether the forward's lean walks (WALK_PAIRS) and RES_WALK's one walk (RES_WALK_PAIRS) step chunk pairs where
        # they store pairs' states alone: for half inputs, the one walk where it is 16 wide.
        if WALK_PAIRS not in (0, 1, 2):
            raise ValueError(f"launch knob WALK_PAIRS must be 0 (chunk by chunk), 1 (automatic: chunk pairs for half "
                             f"inputs where only their states are stored) or 2 (pairs there whatever the dtype); got "
                             f"{WALK_PAIRS!r}")
        self.walk_pairs = WALK_PAIRS == 2 or (WALK_PAIRS == 1 and half)
        if RES_WALK_PAIRS not in (0, 1, 2):
            raise ValueError(f"launch knob RES_WALK_PAIRS must be 0 (automatic), 1 (chunk by chunk) or 2 (chunk "
                             f"pairs); got {RES_WALK_PAIRS!r}")
        self.reswalk_pairs = RES_WALK_PAIRS == 2 or (RES_WALK_PAIRS == 0 and half and self.BV_reswalk <= 16)
        self.residual_code = (_RESIDUAL_IDENTITY if clip is None
                              else _RESIDUAL_CLIP if residual == "clip" else _RESIDUAL_TANH)
        self.clip = 1.0 if clip is None else float(clip)
        # Chunk states (h_S, h_R and the backward's dh_R', dh_S') are stored in the input dtype, as fla stores
        # its forward h: the walks carry fp32 states in registers and round only what they store (nothing
        # builds up across chunks), and every chunk-parallel read of them halves. h_S needs ~16 bits in the
        # residuals (the clip's mask): its walk also stores the rounding error (a lo tile beside the hi one,
        # the split dot_split made there before), which the residual kernel alone reads; every other reader
        # takes hi alone (one half cast). dh_R', dh_S' have no lo since plan P6 (docs/next/rla-p6.md): du and
        # dv read them with one half cast, as RDN and fla do. fp32 inputs keep fp32 states and no lo.
        self.state_dtype = q.dtype
        self.split_states = q.dtype != torch.float32
        # The residuals r and their gradient du are stored in the input dtype too (fp32 inputs: fp32): every
        # dot that reads them casts them to it, so only three fp32 reads change -- du's r.Y (dgamma's residual
        # term), dv's direct -du and dq/dk's gamma r (cast after the product) -- and ~15 passes over an [E, V]
        # tensor halve. The clip's mask is read back from r (|r| < c): a non-saturated r that rounds onto the
        # stored c would flip it (dv moves by a whole gamma Y), so the residual kernel stores such an r as the
        # largest value below the stored c (clip_below, one ulp inside) and du compares with the stored c
        # (clip_mask). tanh and no clip have no mask: clip_mask = clip there.
        self.res_dtype = q.dtype
        self.clip_mask, self.clip_below = self.clip, self.clip
        if self.residual_code == _RESIDUAL_CLIP:
            self.clip_mask, self.clip_below = _stored_clip(self.clip, self.res_dtype)
        self.dot_prec = dot_precision(q.dtype)
        self.dots_fp32 = HALF_DOTS_IN_FP32 or q.dtype == torch.float32
        self.qk_dtype = shapes.rla_qk_dtype(q.dtype, self.dots_fp32)  # QK_KEPT's products, as the dots round them
        self.cu_seqlens = cu_seqlens
        self.varlen = cu_seqlens is not None
        if CHUNK_ORDER not in (0, 1):
            raise ValueError(f"launch knob CHUNK_ORDER must be 0 (the grid's order) or 1 (a chunk's heads first); got "
                             f"{CHUNK_ORDER!r}")
        self.chunk_order = CHUNK_ORDER
        if self.varlen:
            self.chunk_indices, self.chunk_offsets = chunk_tables(cu_seqlens, self.BT, self.T)
            self.n_chunks = self.chunk_indices.shape[0]
            self.parallel_grid = lambda BV: (cdiv(self.V, BV), self.n_chunks, self.H)
        else:
            self.chunk_indices = self.chunk_offsets = None
            nt = cdiv(self.T, self.BT)
            self.n_chunks = self.B * nt
            self.parallel_grid = lambda BV: (cdiv(self.V, BV), nt, self.B * self.H)
        # The forward's residual and output kernels at FWD_HALVES chunks a program (their tables: chunk_tables at that
        # many chunks; no sync), and the state layout of walks storing every such group's first state alone.
        if self.halves == 1:
            self.pair_indices, self.pair_offsets, self.pair_grid = self.chunk_indices, self.chunk_offsets, \
                self.parallel_grid
            self.pair_rows = self.n_chunks
        elif self.varlen:
            self.pair_indices, self.pair_offsets = chunk_tables(cu_seqlens, self.halves * self.BT, self.T)
            self.pair_rows = self.pair_indices.shape[0]
            self.pair_grid = lambda BV: (cdiv(self.V, BV), self.pair_rows, self.H)
        else:
            self.pair_indices = self.pair_offsets = None
            n_pairs = cdiv(nt, self.halves)  # (nt: set above, not varlen either)
            self.pair_rows = self.B * n_pairs
            self.pair_grid = lambda BV: (cdiv(self.V, BV), n_pairs, self.B * self.H)
        # Axes 1 and 2 of a grid stop at GRID_AXIS_LIMIT: the walks put (sequence, head) on axis 2, the
        # chunk-parallel kernels the chunks on axis 1. Refused here, before any launch.
        if self.N * self.H > GRID_AXIS_LIMIT:
            raise ValueError(f"sequences x heads must be at most {GRID_AXIS_LIMIT} (one CUDA grid axis); got "
                             f"{self.N} x {self.H}")
        if self.parallel_grid(self.V)[1] > GRID_AXIS_LIMIT:
            raise ValueError(f"at most {GRID_AXIS_LIMIT} chunks of {self.BT} tokens per call (one CUDA grid "
                             f"axis); got {self.parallel_grid(self.V)[1]}: split the call")

    def state_rows(self, every: int):
        """The layout of a walk storing every ``every``-th chunk's start state (1, or 2 at chunk pairs): its rows
        (None: _chunk_states' default) and a packed batch's first row of each sequence (the kernels' state_offsets)."""
        return (None, self.chunk_offsets) if every == 1 else (self.pair_rows, self.pair_offsets)

    @staticmethod
    def _knob(name: str, auto: int, dim: int) -> int:
        """The width the launch knob ``name`` (a module int above) asks for, ``auto`` at 0: knob_width's rules."""
        return knob_width(name, globals()[name], auto, dim)

    def _rerun_blocks(self, wide: bool, device):
        """The backward's one rerun walk's (K-block, V-block, grid). It runs beside the one reverse walk, whose
        programs already fill the SMs, so it wants few programs, not many: at the forward walks' widths its own
        programs crowded the reverse walk's. Backward wall ms, the rerun's V-block at the forward's 16 / 32 / 64
        (K-block 64; H100, Triton 3.6, 2026-12-06 10:33, `profile_kernels.py --ops rla --wall --tune --knob
        WALK_BV=16,32,64 --knob WALK_STEPS=1,2`, one step a turn): B=2 T=16k 2.969 / 2.946 / **2.811** (128 programs
        at 64), B=1 T=32k 3.452 / **3.321** / 3.367 (128 at 32, 64 at 64). Hence the widest of 64 and 32 with
        programs at least half the SMs, which won at every T of the bench (10:47, `--knob RERUN_WALK_BV=16,32,64`,
        16 / 32 / 64): B=16 T=2k 2.783 / 2.708 / **2.628**, B=4 T=8k 2.794 / 2.715 / **2.644**, B=2 T=16k 2.961 /
        2.949 / **2.810**, B=1 T=32k 3.450 / **3.303** / 3.348."""
        BK = self._knob("RERUN_WALK_BK", self.BK_walk, self.K)
        BV = self.BV_walk
        if wide:
            BV = beside_walk_width(self.V, self.N * self.H * cdiv(self.K, BK), sm_count(device), BV)
        BV = self._knob("RERUN_WALK_BV", BV, self.V)  # (knob_width clamps the automatic width to V's too)
        return BK, BV, (cdiv(self.K, BK), cdiv(self.V, BV), self.N * self.H)

    def _walk_blocks(self, bk_knob: str, bv_knob: str, wide_bk: int, device, wide_bv: bool = False):
        """A walk's (K-block, V-block, idle, grid) from its two knobs: ``wide_bk`` x 32 where (sequence x head,
        V-block) programs fill the GPU's SMs, else 64 x 32, or 64 x 16 where (K-block, V-block, sequence x head)
        programs at 32 wide would be fewer than the SMs (``idle``); with ``wide_bv``, 64 wide where those programs
        at 64 wide still outnumber the SMs."""
        sms = sm_count(device)
        BV = max(16, min(32, next_power_of_2(self.V)))
        BK = min(wide_bk if self.N * self.H * cdiv(self.V, BV) >= sms else 64, self.BK)
        BK = self._knob(bk_knob, BK, self.K)
        idle = self.N * self.H * cdiv(self.K, BK) * cdiv(self.V, BV) < sms
        if wide_bv and wide_reverse_walk(self.V, self.N * self.H * cdiv(self.K, BK), sms):
            BV = 64
        BV = self._knob(bv_knob, 16 if idle else BV, self.V)
        return BK, BV, idle, (cdiv(self.K, BK), cdiv(self.V, BV), self.N * self.H)


def kept_walk_shapes(q, V: int, cu_seqlens=None, chunk_size: int = CHUNK_SIZE) -> tuple:
    """Shapes of the forward's kept outputs (``keep_walk``): h_S, h_R [rows, H, K, V] (rows: the layout's
    n_chunks, for packed batches shapes.kept_rows' bound, as triton_utils.chunk_tables sizes its tables)
    and the residuals r [B, T, H, V], all three in q's dtype (_Layout.state_dtype, res_dtype), then the decayed q.k
    products [B, T, H, BT] (QK_KEPT; _Layout.qk_dtype)."""
    return shapes.rla_kept_shapes(q, V, cu_seqlens, chunk_size)


@functools.lru_cache(maxsize=64)  # (a torch.tensor round trip a call: ~20 us of host time, for a handful of values)
def _stored_clip(clip: float, dtype: torch.dtype):
    """The clip value c as the kernels hold it (fp32), rounded to ``dtype`` -- what a saturated residual
    stores -- and the largest ``dtype`` value below that, where a non-saturated one that would round onto it
    is stored instead."""
    int_dtype = {2: torch.int16, 4: torch.int32}[dtype.itemsize]
    c = torch.tensor([clip], dtype=torch.float32).to(dtype)
    if c.item() == 0:  # a clip below the dtype's smallest value: every residual is 0 and saturated
        return 0.0, 0.0
    below = (c.view(int_dtype) - 1).view(dtype)  # c > 0: one step down the bit pattern is the next value down
    return float(c.float()), float(below.float())


def _contiguous(*xs):
    return [None if x is None else x.contiguous() for x in xs]


def _chunk_states(L: _Layout, like, lo: bool, rows: int | None = None):
    """A walk's per-chunk state buffer in the state dtype (L.n_chunks rows: for packed batches the shapes' bound, the
    shape the op's fake announces for a kept walk; ``rows`` for a walk storing every other state), and its lo buffer
    (None unless ``lo`` and the states are half: see _Layout.split_states)."""
    h = like.new_empty(L.n_chunks if rows is None else rows, L.H, L.K, L.V, dtype=L.state_dtype)
    return h, (torch.empty_like(h) if lo and L.split_states else None)


def _walks_gates(g, beta, gamma):
    """g, beta, gamma as the walks take them (WALK_GATES): fp32, or as given."""
    if WALK_GATES not in (0, 1):
        raise ValueError(f"launch knob WALK_GATES must be 0 (the gates as given) or 1 (fp32); got {WALK_GATES!r}")
    return walk_gates(g, beta, gamma) if WALK_GATES else (g, beta, gamma)


def _walk(L: _Layout, k, x, g, rate, h0, split: bool, lo: bool, beside: Beside | None = None, every: int = 1):
    """One additive state over every chunk: its chunk-start states (hi, lo or None) and its final state (fp32).
    ``beside``: queued on its stream. ``every`` 2: the states of chunk pairs' first chunks alone (L.pair_rows rows,
    which only the forward's residual and output kernels at FWD_HALVES 2 read)."""
    rows, offsets = L.state_rows(every)
    h, h_lo = _chunk_states(L, k, lo, rows)
    final = k.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32)
    beside = beside or Beside(k, False)
    # a step of two chunks stores each pair's start state: STATE_EVERY 1 there
    BT, every = (2 * L.BT, 1) if every == 2 and L.walk_pairs else (L.BT, every)
    tiles = _walk_descriptors(L, k, x, BT)
    k_t, x_t = tiles or (k, x)
    with beside:
        _state_walk_kernel[L.walk_grid](
            k_t, x_t, g, rate, h0, h, h if h_lo is None else h_lo, final, L.cu_seqlens, offsets, L.T,
            H=L.H, K=L.K, V=L.V, BT=BT, BK=L.BK_walk, BV=L.BV_walk,
            SPLIT=split, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, HAS_H0=h0 is not None,
            HAS_LO=h_lo is not None, IS_VARLEN=L.varlen, WALK_STEPS=L.walk_steps, STATE_EVERY=every,
            TMA=tiles is not None,
        )
    beside.use(k, x, g, rate, h0, h, h_lo, final, L.cu_seqlens, offsets)
    return h, h_lo, final


def _pair_launch(L: _Layout, every: int) -> dict:
    """What the residual and output kernels take besides their tensors: their chunk tables at L.halves chunks a
    program, and where the walks that ran with ``every`` keep the states they read."""
    return dict(args=(L.cu_seqlens, L.pair_indices, L.state_rows(every)[1]),
                meta=dict(IS_VARLEN=L.varlen, CHUNK_ORDER=L.chunk_order, HALVES=L.halves, STATE_EVERY=every))


def _run_states(L: _Layout, k, v, g, beta, gamma, S0, R0, every: int = 1):
    """The forward's passes up to the output: chunk-start states of S and R, residuals, final states, from the gates
    as the walks take them (_walks_gates; the residual kernel reads the same values). h_S comes with its lo buffer
    (the residuals read ~16 bits of it); h_R without. ``every`` 2: the walks store the states the forward's
    chunk-parallel kernels read alone (L.halves 2), not the backward's. Where L.res_walk, one walk does it all
    (_residual_walk)."""
    res = v.new_empty(v.shape, dtype=L.res_dtype)
    if L.res_walk:
        return _residual_walk(L, k, v, g, beta, gamma, S0, R0, res, every)
    h_s, h_s_lo, S_T = _walk(L, k, v, g, beta, S0, True, True, every=every)
    pairs = _pair_launch(L, every)
    _rla_residual_kernel[L.pair_grid(L.BV_res)](
        k, v, g, beta, h_s, h_s if h_s_lo is None else h_s_lo, res, *pairs["args"], L.clip,
        L.clip_mask, L.clip_below, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_res,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, HAS_LO=h_s_lo is not None,
        **pairs["meta"],
    )
    del h_s_lo  # only the residuals read it
    h_r, _, R_T = _walk(L, k, res, g, gamma, R0, False, False, every=every)
    return h_s, h_r, res, S_T, R_T


def _residual_walk(L: _Layout, k, v, g, beta, gamma, S0, R0, res, every: int):
    """_run_states as one walk (RES_WALK): u's in-chunk sums w first, chunk-parallel, then the walk making the
    residuals between its steps of S and R. h_S without lo (the residual kernel, its only reader, does not run)."""
    w = v.new_empty(v.shape, dtype=torch.float32)
    pairs = every == 2 and L.reswalk_pairs  # a step of two chunks, as _walk's
    BT = 2 * L.BT if pairs else L.BT
    grid, indices, w_offsets = ((L.pair_grid(L.BV_wpass), L.pair_indices, L.pair_offsets) if pairs else
                                (L.parallel_grid(L.BV_wpass), L.chunk_indices, L.chunk_offsets))
    _rla_residual_kernel[grid](
        k, v, g, beta, w, w, w, L.cu_seqlens, indices, w_offsets, L.clip, L.clip_mask, L.clip_below,
        L.T, H=L.H, K=L.K, V=L.V, BT=BT, BK=L.BK, BV=L.BV_wpass,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, HAS_LO=False,
        IS_VARLEN=L.varlen, CHUNK_ORDER=L.chunk_order, HALVES=1, STATE_EVERY=1, IN_CHUNK=True,
    )
    rows, offsets = L.state_rows(every)
    (h_s, _), (h_r, _) = _chunk_states(L, k, False, rows), _chunk_states(L, k, False, rows)
    S_T, R_T = (k.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32) for _ in range(2))
    tiles = _residual_walk_descriptors(L, k, v, w, BT)
    k_t, v_t, w_t = tiles or (k, v, w)
    _residual_walk_kernel[L.reswalk_grid](
        k_t, v_t, w_t, g, beta, gamma, S0, R0, h_s, h_r, res, S_T, R_T, L.cu_seqlens, offsets, L.clip, L.clip_mask,
        L.clip_below, L.T, H=L.H, K=L.K, V=L.V, BT=BT, BK=L.BK, BV=L.BV_reswalk,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, HAS_S0=S0 is not None,
        HAS_R0=R0 is not None, IS_VARLEN=L.varlen, STATE_EVERY=1 if pairs else every, TMA=tiles is not None,
    )
    return h_s, h_r, res, S_T, R_T


def _residual_walk_descriptors(L: _Layout, k, v, w, BT: int) -> tuple | None:
    """RES_WALK's k ([tokens, H x K] in [BT, K] tiles), v and w ([tokens, H x V] in [BT, BV] ones) as TMA descriptors,
    or None (pointers) where RES_WALK_TMA is 0, the device has no TMA, a tile would cross a head (K not its K-block, V
    not a multiple of the V-block) or a tensor's layout is not one TMA reads."""
    if RES_WALK_TMA not in (0, 1):
        raise ValueError(f"launch knob RES_WALK_TMA must be 0 (pointers) or 1 (TMA descriptors); got "
                         f"{RES_WALK_TMA!r}")
    if not RES_WALK_TMA or L.K != L.BK or L.V % L.BV_reswalk:
        return None
    rows_v = (BT, L.BV_reswalk)
    return rows_descriptors((k, L.H * L.K, (BT, L.BK)), (v, L.H * L.V, rows_v), (w, L.H * L.V, rows_v))


def _rerun_walks(L: _Layout, k, v, g, beta, gamma, S0, R0, res, beside: Beside, steps: int):
    """The backward's chunk-start states h_s, h_r from the kept residuals, both walks (RERUN_WALK 1: as one, ``steps``
    chunks a loop turn) queued on ``beside``'s stream; the gates as the walks take them (_walks_gates)."""
    if RERUN_WALK not in (0, 1):
        raise ValueError(f"launch knob RERUN_WALK must be 0 (two walks) or 1 (one walk); got {RERUN_WALK!r}")
    if not RERUN_WALK:
        h_s, _, _ = _walk(L, k, v, g, beta, S0, True, False, beside=beside)
        h_r, _, _ = _walk(L, k, res, g, gamma, R0, False, False, beside=beside)
        return h_s, h_r
    (h_s, _), (h_r, _) = _chunk_states(L, k, False), _chunk_states(L, k, False)
    with beside:
        _rerun_walk_kernel[L.rerun_grid](
            k, v, res, g, beta, gamma, S0, R0, h_s, h_r, L.cu_seqlens, L.chunk_offsets, L.T,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK_rerun, BV=L.BV_rerun, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
            HAS_S0=S0 is not None, HAS_R0=R0 is not None, IS_VARLEN=L.varlen, WALK_STEPS=steps,
        )
    beside.use(k, v, res, g, beta, gamma, S0, R0, h_s, h_r, L.cu_seqlens, L.chunk_offsets)
    return h_s, h_r


def _dwalk(L: _Layout, q, do, g, rate, scale, k, du, dh_t):
    """One state gradient carried backwards: each chunk's end-state gradient (in the state dtype, no lo: see
    _Layout.split_states) and the initial state's (fp32)."""
    dh, _ = _chunk_states(L, q, False)
    dh0 = q.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32)
    _dstate_walk_kernel[L.dwalk_grid](
        q, do, k, du, g, rate, dh_t, dh, dh0,
        L.cu_seqlens, L.chunk_offsets, scale, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK_dwalk, BV=L.BV_dwalk,
        HAS_RATE=rate is not None, HAS_KEYS=k is not None, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
        HAS_DHT=dh_t is not None, IS_VARLEN=L.varlen, WALK_STEPS=L.dwalk_steps,
    )
    return dh, dh0


def _du_walk_knobs(L: _Layout, beside: bool) -> tuple[bool, int]:
    """Whether one reverse walk makes du (DU_WALK; ``beside``: the rerun walks run beside it), and its warps; both
    knobs validated."""
    if DU_WALK not in (0, 1, 2):
        raise ValueError(f"launch knob DU_WALK must be 0 (dh_R's walk, du, dh_S's walk), 1 (one walk) or 2 (one walk "
                         f"where its programs fill the GPU or the rerun runs beside it); got {DU_WALK!r}")
    if DU_WALK_WARPS not in (4, 8):
        raise ValueError(f"launch knob DU_WALK_WARPS must be 4 or 8; got {DU_WALK_WARPS!r}")
    return DU_WALK == 1 or (DU_WALK == 2 and (beside or not L.duwalk_few)), DU_WALK_WARPS


def _du_walk(L: _Layout, q, k, g, gamma, res, do, du, dgamma_part, scale, dR_T, dS_T, warps: int, steps: int,
             qk=None):
    """Both state gradients carried backwards by one walk that also writes du and the residual's dgamma share
    (dgamma_part's first rows, one a V-block): each chunk's end-state gradients (state dtype) and the initial
    states' (fp32). ``qk``: the forward's kept q.k products (QK_KEPT), read instead of made."""
    dh_r, _ = _chunk_states(L, q, False)
    dh_s, _ = _chunk_states(L, q, False)
    dR0, dS0 = (q.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32) for _ in range(2))
    tiles = _du_walk_descriptors(L, q, k, do, res, qk)
    q_t, k_t, do_t, res_t, qk_t = tiles or (q, k, do, res, q if qk is None else qk)
    _rla_bwd_du_walk_kernel[L.duwalk_grid](
        q_t, k_t, g, gamma, res_t, do_t, du, dgamma_part, dR_T, dS_T, dh_r, dh_s, dR0, dS0, qk_t,
        L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.clip_mask, L.T, gamma.numel(),
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_duwalk,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
        HAS_DRT=dR_T is not None, HAS_DST=dS_T is not None, IS_VARLEN=L.varlen,
        HAS_QK=qk is not None, num_warps=warps, num_stages=2, WALK_STEPS=steps, TMA=tiles is not None,
    )
    return dh_r, dh_s, dR0, dS0


def _du_walk_descriptors(L: _Layout, q, k, do, res, qk) -> tuple | None:
    """The one reverse walk's q, k ([tokens, H x K] in [BT, K] tiles), do, res ([tokens, H x V] in [BT, BV] tiles) and
    qk ([tokens, H x BT] in [BT, BT] tiles; q's where None, unread) as TMA descriptors, or None (pointers) where DU_TMA
    is 0, the device has no TMA, a tile would cross a head (K not its K-block, V not a multiple of its V-block) or a
    tensor's layout is not one TMA reads."""
    if DU_TMA not in (0, 1):
        raise ValueError(f"launch knob DU_TMA must be 0 (pointers) or 1 (TMA descriptors); got {DU_TMA!r}")
    if not DU_TMA or L.K != L.BK or L.V % L.BV_duwalk:
        return None
    rows_k, rows_v = (L.BT, L.BK), (L.BT, L.BV_duwalk)
    qk_tile = () if qk is None else ((qk, L.H * L.BT, (L.BT, L.BT)),)
    tiles = rows_descriptors((q, L.H * L.K, rows_k), (k, L.H * L.K, rows_k), (do, L.H * L.V, rows_v),
                             (res, L.H * L.V, rows_v), *qk_tile)
    if tiles is not None and qk is None:
        tiles += tiles[:1]  # qk unread (HAS_QK false): q's descriptor stands in, not a second one of q
    return tiles


def _overlap() -> int:
    """OVERLAP, validated: 0, 1 or 2."""
    if OVERLAP not in (0, 1, 2):
        raise ValueError(f"launch knob OVERLAP must be 0 (one stream), 1 (the rerun walks beside) or 2 (and the intra "
                         f"kernel); got {OVERLAP!r}")
    return OVERLAP


def _intra(L: _Layout, q, k, v, g, beta, gamma, res, do, du, scale, beside: bool):
    """Each chunk's token-to-token matrices M, Mk (sums over all of V, what dq and dk read of the other tokens) and
    gamma's in-chunk term, and the Beside they were queued on (``beside``: the second stream, forked after du and
    after these buffers are allocated, so that nothing it writes is memory the current stream frees later)."""
    # M and Mk in the input dtype: the dq/dk kernel casts them to it in every dot that reads them (fp32 inputs:
    # fp32), so storing them rounded changes nothing there and halves their bytes (written once, read per K-block).
    m, mk = (q.new_empty(L.n_chunks, L.H, L.BT, L.BT, dtype=L.state_dtype) for _ in range(2))
    dgamma_intra = torch.empty_like(gamma, dtype=torch.float32)  # every token written by the intra kernel
    side = Beside(k, beside)
    with side:
        _rla_bwd_intra_kernel[L.parallel_grid(L.V)[1:]](  # (chunk, head) or (chunk, (sequence, head))
            q, k, v, g, beta, gamma, res, do, du, m, mk, dgamma_intra,
            L.cu_seqlens, L.chunk_indices, scale, L.T,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_intra,
            DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen, CHUNK_ORDER=L.chunk_order,
        )
    side.use(q, k, v, g, beta, gamma, res, do, du, m, mk, dgamma_intra, L.cu_seqlens, L.chunk_indices)
    return m, mk, dgamma_intra, side


def chunk_rla_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", S0=None, R0=None,
                  cu_seqlens=None, *, chunk_size: int = CHUNK_SIZE, keep_walk: bool = False,
                  keep_tokens: bool = False):
    """RLA forward over whole sequences: ``(o, S_T, R_T)``, o in v's dtype, states fp32 [N, H, K, V].

    ``keep_walk``: also return ``(h_s, h_r, r, qk)`` (``kept_walk_shapes``) for ``chunk_rla_bwd(..., walk=)``, which
    then skips its rerun of the state walks and the residuals. ``keep_tokens`` (without keep_walk): also return
    ``(r, qk)``, the residuals (v's shape and dtype) and the chunks' decayed q.k products (QK_KEPT; without it neither
    tuple has qk), with which the backward reruns the two walks but not the residual kernel. The same passes run either
    way and give the same bits; with keep_walk the walks store every chunk's state (else every other one: FWD_HALVES),
    returned without h_S's lo part, which only the residual kernel reads.
    """
    if k.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share dtype and q, k shape; got q {q.dtype} {tuple(q.shape)}, "
                         f"k {k.dtype} {tuple(k.shape)}, v {v.dtype}")
    L = _Layout(q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0 = _contiguous(q, k, v, g, beta, gamma, S0, R0)
    # A kept walk hands the backward every chunk's state; else the walks store what the output kernel reads alone.
    every = 1 if keep_walk else L.halves
    h_s, h_r, res, S_T, R_T = _run_states(L, k, v, *_walks_gates(g, beta, gamma), S0, R0, every)
    o = torch.empty_like(v)
    store_qk = bool(QK_KEPT) and (keep_walk or keep_tokens)
    qk = q.new_empty(*q.shape[:3], L.BT, dtype=L.qk_dtype) if store_qk else o  # (o: a pointer never written)
    pairs = _pair_launch(L, every)
    _rla_fwd_output_kernel[L.pair_grid(L.BV_out)](
        q, k, v, g, beta, gamma, h_s, h_r, res, o, qk, *pairs["args"], scale, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_out, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
        STORE_QK=store_qk, QK_IF=bool(QK_STORE_IF), **pairs["meta"],
    )
    kept = ((h_s, h_r, res) if keep_walk else (res,) if keep_tokens else ()) + ((qk,) if store_qk else ())
    return (o, S_T, R_T) + ((kept,) if kept else ())


def _walk_descriptors(L: _Layout, k, x, BT: int) -> tuple | None:
    """A forward walk's k and x (v or the residuals) as TMA descriptors, [tokens, H x K] in [BT, BK] tiles and [tokens,
    H x V] in [BT, BV] ones (BT: the walk's step, L.BT or a pair's), or None (pointers) where WALK_TMA is 0, the device
    has no TMA, a tile would cross a head (K not a multiple of the walk's K-block, V of its V-block) or a tensor's
    layout is not one TMA reads."""
    if not WALK_TMA or L.K % L.BK_walk or L.V % L.BV_walk:
        return None
    return rows_descriptors((k, L.H * L.K, (BT, L.BK_walk)), (x, L.H * L.V, (BT, L.BV_walk)))


def _kept(walk, L: _Layout, q, cu_seqlens) -> tuple[list, torch.Tensor | None]:
    """What of ``walk`` a forward of this call's shapes and chunking kept: its walk (h_s, h_r, r) or its residuals
    (r,), all in q's dtype, each with or without the q.k products qk last (QK_KEPT); ([], None) where it does not fit.
    The states' shapes pin the chunking down: chunk sizes are powers of two, and two give the same row count only when
    every sequence fits one chunk of either, where the chunk-start states are the initial ones. The residuals do not
    depend on the chunking but through rounding; qk's last dim is the chunk size."""
    if walk is None or len(walk) not in (1, 2, 3, 4):
        return [], None
    n = len(walk) - (len(walk) % 2 == 0)  # (r,) or (h_s, h_r, r), before qk
    want = list(zip(kept_walk_shapes(q, L.V, cu_seqlens, L.BT), (L.state_dtype, L.state_dtype, L.res_dtype,
                                                                  L.qk_dtype)))
    fits = [tuple(t.shape) == s and t.dtype == d for t, (s, d) in zip(walk, want[3 - n:3] + want[3:])]
    if not all(fits[:n]):
        return [], None
    qk = walk[n].contiguous() if len(walk) > n and fits[n] else None
    return [t.contiguous() for t in walk[:n]], qk


def chunk_rla_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T,
                  *, chunk_size: int = CHUNK_SIZE, walk=None):
    """Gradients ``(dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)``, each in its input's dtype.

    ``dS_T``/``dR_T`` None mean the final states were not used; ``dS0``/``dR0`` are None when ``S0``/``R0``
    are None. ``walk``: the forward's ``(h_s, h_r, r)`` (``chunk_rla_fwd(keep_walk=True)``), used instead of
    rerunning the walks and the residuals when it fits this call, or its ``(r,)`` (``keep_tokens=True``), used
    instead of rerunning the residuals (else, or when None, rerun all three passes); either with the forward's q.k
    products last (QK_KEPT), read instead of made where they fit.
    """
    if k.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share dtype and q, k shape; got q {q.dtype} {tuple(q.shape)}, "
                         f"k {k.dtype} {tuple(k.shape)}, v {v.dtype}")
    L = _Layout(q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    if do.shape != v.shape:
        raise ValueError(f"do must have v's shape {tuple(v.shape)}; got {tuple(do.shape)}")
    for name, d in (("dS_T", dS_T), ("dR_T", dR_T)):
        if d is not None and tuple(d.shape) != (L.N, L.H, L.K, L.V):
            raise ValueError(f"{name} must be [N, H, K, V] = {[L.N, L.H, L.K, L.V]}; got {tuple(d.shape)}")
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T = _contiguous(
        q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T)
    kept, qk = _kept(walk, L, q, cu_seqlens)
    qk = qk if QK_KEPT else None  # (0: made here even where kept, so that profile_kernels.py --knob compares both)
    rerun = len(kept) == 1  # the residuals kept: the two walks alone (S's without the lo buffer the residuals read)
    overlap = _overlap()
    du_walk, du_walk_warps = _du_walk_knobs(L, rerun and overlap >= 1)
    paired = rerun and overlap >= 1 and du_walk  # the rerun walk beside the one reverse walk
    rerun_steps, du_walk_steps = (L.beside_steps,) * 2 if paired else (L.walk_steps, L.duwalk_steps)
    gates = _walks_gates(g, beta, gamma)  # once, for every walk below
    if len(kept) == 3:
        h_s, h_r, res = kept
    elif not rerun:
        h_s, h_r, res, _, _ = _run_states(L, k, v, *gates, S0, R0)
    else:
        res = kept[0]
        beside = Beside(k, overlap >= 1)
        h_s, h_r = _rerun_walks(L, k, v, *gates, S0, R0, res, beside, rerun_steps)

    # dh_R' per chunk (its end-state gradient), then du and gamma's residual term; dh_S' (which du feeds),
    # then dv and dbeta (DU_WALK 1: the first three as one walk). The per-V-block partial sums are reduced below.
    nv_du, nv_dv = cdiv(L.V, L.BV_duwalk if du_walk else L.BV_du), cdiv(L.V, L.BV_grad)
    nk = cdiv(L.K, L.BK_par)
    # dg's partial sums: nk from the dq/dk/dg kernel's K-blocks
    dg_part = q.new_empty(nk, *g.shape, dtype=torch.float32)
    du = torch.empty_like(res)  # the input dtype, as r (see _Layout.res_dtype)
    # dgamma's partial sums: nv_du from du (the residual's term), then nk from dq/dk/dg (the output term through h_R);
    # all reduced with dg's and dbeta's by one small kernel at the end
    dgamma_part = q.new_empty(nv_du + nk, *gamma.shape, dtype=torch.float32)
    if du_walk:
        dh_r, dh_s, dR0, dS0 = _du_walk(L, q, k, gates[0], gates[2], res, do, du, dgamma_part, scale, dR_T, dS_T,
                                        du_walk_warps, du_walk_steps, qk)
        intra = _intra(L, q, k, v, g, beta, gamma, res, do, du, scale, beside=True) if overlap == 2 else None
    else:
        dh_r, dR0 = _dwalk(L, q, do, gates[0], gates[2], scale, None, None, dR_T)
        _rla_bwd_du_kernel[L.parallel_grid(L.BV_du)](
            q, k, g, gamma, res, do, dh_r, du, dgamma_part, q if qk is None else qk,
            L.cu_seqlens, L.chunk_indices, scale, L.clip, L.clip_mask, L.T, gamma.numel(),
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_du,
            RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen,
            CHUNK_ORDER=L.chunk_order, HAS_QK=qk is not None,
        )
        intra = _intra(L, q, k, v, g, beta, gamma, res, do, du, scale, beside=True) if overlap == 2 else None
        dh_s, dS0 = _dwalk(L, q, do, gates[0], None, scale, k, du, dS_T)
    dv = torch.empty_like(v)
    dbeta_part = q.new_empty(nv_dv, *beta.shape, dtype=torch.float32)
    _rla_bwd_dv_kernel[L.parallel_grid(L.BV_grad)](
        q, k, v, g, beta, do, du, dh_s, dv, dbeta_part, q if qk is None else qk,
        L.cu_seqlens, L.chunk_indices, scale, L.T, beta.numel(),
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_grad,
        DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen, CHUNK_ORDER=L.chunk_order,
        HAS_QK=qk is not None,
    )

    # dq, dk, dg and gamma's output term: first each chunk's token-to-token matrices M, Mk (sums over all of V)
    # and gamma's in-chunk term (_intra: here, or at OVERLAP 2 beside dh_S's walk and dv), then per K-block the state
    # terms, reading M and Mk.
    m, mk, dgamma_intra, intra_beside = intra or _intra(L, q, k, v, g, beta, gamma, res, do, du, scale, beside=False)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    if rerun:
        beside.join()  # the rerun's chunk states
    intra_beside.join()
    grid = (nk,) + L.parallel_grid(L.V)[1:]  # per K-block, chunk and head; each loops over V-blocks
    _rla_bwd_dqkg_kernel[grid](
        q, k, v, g, beta, gamma, h_s, h_r, res, do, du, dh_s, dh_r, m, mk,
        dq, dk, dg_part, dgamma_part[nv_du:],
        L.cu_seqlens, L.chunk_indices, scale, L.clip, L.clip_mask, L.T, g.numel(),
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK_par, BV=L.BV_dqkg,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen,
        CHUNK_ORDER=L.chunk_order,
    )
    # the partial sums, added and cast in one launch (plan P7: it replaces four torch sums, two adds and a zero fill)
    dg, dbeta, dgamma = torch.empty_like(g), torch.empty_like(beta), torch.empty_like(gamma)
    E = g.numel()
    _rla_bwd_sums_kernel[(max(1, cdiv(E, SUMS_BLOCK)),)](
        dg_part, dg_part.shape[0], dbeta_part, dbeta_part.shape[0], dgamma_part, dgamma_part.shape[0], dgamma_intra,
        dg, dbeta, dgamma, E, BLOCK=SUMS_BLOCK,
    )
    return (dq, dk, dv, dg, dbeta, dgamma,
            None if S0 is None else dS0.to(S0.dtype), None if R0 is None else dR0.to(R0.dtype))

"""Where the RLA and RDN chunk kernels spend their time: GPU time per kernel (torch.profiler), fwd and bwd.

    . scripts/gpu_env.sh && python3 scripts/profile_kernels.py [--ops rdn,rla] [--shapes B,T,H,K ...] [--tune]
        [--fwd-chunks 64,128] [--bwd-chunks 64,32] [--walk-warps 8,4] [--walk-stages 1,2] [--grad-bk 64,128]
        [--knob NAME=V1,V2 ...] [--infer] [--keep-walk] [--wall] [--host] [--api] [--packed [equal]]

Default shapes: the benchmark's (bf16, 32768 tokens, 16 heads, head dim 128) at T = 2k and 32k, and
SmolLM2-135M's prefill (9 heads, head dim 64, batch 1, 32k). Prints one line per kernel: ms per call.
With --tune the kernels autotune (every config compiled and timed) and the configs chosen are printed;
without, each kernel runs its first (fixed) config. --knob names an int of each op's chunk module (RDN's MATS_BV,
GRAD_BV, PREP_BK, ...; RLA's are listed in rla/chunk.py's LAUNCH_KNOBS, and WALK_STEPS=1,2): give --ops the op it
belongs to (a knob an op lacks ends the run before any GPU work). --wall adds each pass's wall time (the median of
triton.testing.do_bench): kernels on two streams (the backwards' OVERLAP) or waiting on each other in one launch (RDN's
TRAILED_WALKS) overlap, so their GPU times add up to more than the pass takes; a wall far over the GPU time is a
host-bound pass, which --host shows: the launching Python's time a call and where the call synchronizes with the GPU
(torch.cuda.set_sync_debug_mode; 2026-12-07: a pieced RLA pass with walls 2-9 ms over its GPU time). --api adds
fwd+bwd through the public op with autograd (rla_kernels.api, as `rla-convert bench kernels` times it): what the chunk
functions' passes do not show, the op's own tensor work around the kernels (it found autograd zero-filling the saved
tensors' cotangents, 0.2-0.5 ms a call, 2026-12-02). --packed times a shape B,T as training feeds it (distillation
packs its batches): one row of B sequences through cu_seqlens, the same B*T tokens, lengths uneven (about T +- T/4,
none a multiple of 32; packed_lengths); --packed equal gives the B sequences T tokens each.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import os
import statistics
import sys
import time
import warnings

import torch
import triton.testing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
# gpu_check_rdn also puts rla_kernels on the path, and pins fixed configs unless --tune
from gpu_check_rdn import knob_values, make_inputs  # noqa: E402

MODULES = {"rdn": ("wy", "chunk_fwd", "segmented", "chunk_bwd"), "rla": ("chunk_fwd", "chunk_bwd")}


def packed_lengths(B, T, kind="uneven"):
    """B sequence lengths summing to B*T: ``equal``, T each; ``uneven``, drawn within T/4 of T (the last takes the
    remainder) and none a multiple of 32 when B > 1 (a packed batch whose sequences end mid-chunk), the same for
    every run."""
    if kind == "equal":
        return [T] * B
    gen = torch.Generator().manual_seed(B * 100003 + T)
    lengths = [T + int(d) for d in torch.randint(-(T // 4), T // 4 + 1, (B,), generator=gen)]
    lengths = [n + 1 if n % 32 == 0 else n for n in lengths]
    lengths[-1] += B * T - sum(lengths)
    if B > 1 and (lengths[-1] < 1 or lengths[-1] % 32 == 0):
        lengths[-1], lengths[0] = lengths[-1] + 3, lengths[0] - 3
    return lengths


def entry_points(op):
    chunk = __import__(f"rla_kernels.{op}.chunk", fromlist=["chunk"])
    return getattr(chunk, f"chunk_{op}_fwd"), getattr(chunk, f"chunk_{op}_bwd")


def profile(fn, iters=3):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per_kernel = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name[:60]] += e.device_time / 1000 / iters
    return per_kernel


def host_time(fn, iters=5):
    """The launching Python's time of one call of ``fn`` in ms (the median of ``iters``, the GPU drained before each,
    so that no launch waits on a full queue) and where one call synchronizes with the GPU (sync_sites)."""
    cuda = torch.cuda.is_available()
    drain = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for _ in range(iters):
        drain()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if not cuda:
        return statistics.median(times) * 1e3, collections.Counter()
    drain()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return statistics.median(times) * 1e3, sync_sites(caught)


def sync_sites(caught) -> collections.Counter:
    """'file:line' -> count of the synchronizing CUDA calls among recorded warnings (sync debug mode's)."""
    return collections.Counter(f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message))


def api_pass(op, x, do):
    """fwd+bwd through the public op, its gradients set to None before each call (none accumulate): the pass and
    its leaves (copies of ``x``)."""
    from rla_kernels import api

    leaves = [t.detach().clone().requires_grad_() for t in x]

    def run():
        for t in leaves:
            t.grad = None
        getattr(api, op)(*leaves)[0].backward(do)

    return run, leaves


def chosen_configs(op):
    """Each autotuned kernel's choice per key, from the autotuners' caches."""
    for module in MODULES[op]:
        mod = sys.modules.get(f"rla_kernels.{op}.{module}")
        for name, obj in sorted(vars(mod).items()) if mod else ():
            for key, config in getattr(obj, "cache", {}).items() if hasattr(obj, "configs") else ():
                yield f"{name} {key[:8]} -> warps {config.num_warps} stages {config.num_stages}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", default="rdn,rla")
    parser.add_argument("--shapes", nargs="*", default=["16,2048,16,128", "1,32768,16,128", "1,32768,9,64"])
    parser.add_argument("--tune", action="store_true", help="autotune (read by gpu_check_rdn at import)")
    parser.add_argument("--fwd-chunks", default="", help="forward chunk sizes to profile, e.g. 64,128 (default: "
                        "the op's own, RLA 64, RDN 32); the backward runs at --bwd-chunks, its rerun at that size")
    parser.add_argument("--bwd-chunks", default="64", help="backward chunk sizes to profile, e.g. 64,32 (RDN's "
                        "backward chunks by at most chunk.BWD_CHUNK_SIZE, 32 by default; 0 chooses)")
    parser.add_argument("--saved-chunk", type=int, default=0, help="RDN only: the chunk size of the forward whose "
                        "kept tokens and chunk matrices the backward takes (default: the op's own, 32); e.g. 64 with "
                        "--bwd-chunks 64 --knob BWD_CHUNK_SIZE=64 for a backward that reuses a 64-token forward's")
    parser.add_argument("--walk-warps", default="", help="RDN only: warps of the state walks to compare, e.g. 8,4 "
                        "(default: chunk.WALK_WARPS)")
    parser.add_argument("--walk-stages", default="", help="RDN only: pipelining stages of the forward walk and its "
                        "rerun to compare, e.g. 1,2 (default: chunk.WALK_STAGES)")
    parser.add_argument("--grad-bk", default="", help="RDN only: K-block widths of the backward's gradient kernel "
                        "to compare, e.g. 64,128 (default: chunk.GRAD_BK)")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME=V1,V2",
                        help="any int launch knob of the op's chunk module to compare, e.g. OUT_BV=32,64 (repeatable)")
    parser.add_argument("--keep-walk", action="store_true", help="also profile the forward and backward with the "
                        "walk kept (recompute_states=False: keep_walk; RDN's backward takes h_s, h_r, U, W, X, "
                        "RLA's h_S, h_R, r)")
    parser.add_argument("--infer", action="store_true", help="also profile the forward as inference runs it (no "
                        "autograd: the API keeps nothing for a backward, RDN's walk stores no X)")
    parser.add_argument("--wall", action="store_true", help="also time each pass as a whole (do_bench median)")
    parser.add_argument("--host", action="store_true", help="also time each pass's host side (the Python launching "
                        "it, the GPU drained first) and name where it synchronizes with the GPU")
    parser.add_argument("--api", action="store_true", help="also profile fwd+bwd through the public op with autograd "
                        "(rla_kernels.api: the kernels and the op's own tensor work)")
    parser.add_argument("--packed", nargs="?", const="uneven", choices=("uneven", "equal"),
                        help="each shape B,T as one packed row of B sequences (cu_seqlens), as distillation feeds the "
                        "ops: of uneven lengths (the default), or 'equal', B of T tokens, which separates what the "
                        "packed path itself costs from what the uneven lengths do; not with --api")
    args = parser.parse_args()
    if args.packed and args.api:
        sys.exit("--packed and --api: the API pass takes equal-length batches only here; give one of them")
    # Said in every log: a first-config profile is not what the (autotuned) benches run; RDN's gradient kernel takes
    # ~2x its autotuned time there (2.53 against 1.35 ms at B=16 T=2k, H200, 2026-12-03), and a log read later
    # without its command line was taken for production's breakdown.
    print("configs: autotuned (--tune); the configs chosen follow each op's profiles" if args.tune else
          "configs: each kernel's first (fixed) config, not the autotuned ones the benches run (RDN's gradient kernel "
          "~2x its autotuned time); --tune for those", flush=True)
    for op in args.ops.split(","):
        fwd, bwd = entry_points(op)
        chunk = sys.modules[f"rla_kernels.{op}.chunk"]
        # The launch knobs to compare, parsed before any GPU work: (chunk attribute, values), every combination a
        # setting; --walk-warps, --walk-stages and --grad-bk name three of RDN's.
        named = [f"{attr}={given}" for attr, given in (("WALK_WARPS", args.walk_warps),
                                                       ("WALK_STAGES", args.walk_stages), ("GRAD_BK", args.grad_bk))
                 if given and op == "rdn"]
        knobs = [knob_values(chunk, given, "--knob") for given in named + args.knob]
        for shape in args.shapes:
            B, T, H, K = (int(x) for x in shape.split(","))
            x, _, _ = make_inputs(B, T, H, K, K, B, torch.bfloat16)
            cu = None
            if args.packed:
                x = [t.reshape(1, B * T, *t.shape[2:]) for t in x]
                lengths = packed_lengths(B, T, args.packed)
                cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
                print(f"{op} B={B} T={T} packed: lengths {min(lengths)}-{max(lengths)}", flush=True)
            do = torch.randn_like(x[2])
            # the backward takes what the API's forward hands it by default with autograd (kernels/library.py):
            # RDN's chunk matrices, and either op's per-token tensors of its walk (RLA's residuals, RDN's U, W, X)
            save = {"save_wy": True} if op == "rdn" else {}
            tokens = fwd(*x, None, 1.0, "clip", None, None, cu, keep_tokens=True, **save,
                         **({"chunk_size": args.saved_chunk} if args.saved_chunk and op == "rdn" else {}))
            saved = {"walk": tokens[-1], **({"wy": tokens[3]} if op == "rdn" else {})}
            del tokens
            passes = []
            for values in itertools.product(*(vals for _, vals in knobs)):
                chosen = dict(zip((attr for attr, _ in knobs), values))

                def setting(fn, chosen=chosen):
                    def run():
                        before = {attr: getattr(chunk, attr) for attr in chosen}
                        for attr, value in chosen.items():
                            setattr(chunk, attr, value)
                        try:
                            return fn()
                        finally:
                            for attr, value in before.items():
                                setattr(chunk, attr, value)
                    return run
                tag = (" (" + ", ".join(f"{attr} {value}" for attr, value in chosen.items()) + ")") if chosen else ""
                for c in (map(int, args.fwd_chunks.split(",")) if args.fwd_chunks else [None]):
                    # the forward as training runs it (the API with autograd: keep_tokens)
                    passes.append(((f"fwd (chunk {c})" if c else "fwd") + tag, setting(
                        lambda c=c: fwd(*x, None, 1.0, "clip", None, None, cu, keep_tokens=True, **save,
                                        **({"chunk_size": c} if c else {})))))
                for c in map(int, args.bwd_chunks.split(",")):
                    passes.append(((f"bwd (chunk {c})" if args.bwd_chunks != "64" else "bwd") + tag, setting(
                        lambda c=c: bwd(*x, None, 1.0, "clip", None, None, cu, do, None, None, chunk_size=c,
                                        **saved))))
                if args.infer:
                    passes.append((f"fwd (inference){tag}", setting(
                        lambda: fwd(*x, None, 1.0, "clip", None, None, cu))))
                if args.keep_walk:
                    # the walk comes last, after RDN's chunk matrices (chunk_{op}_fwd)
                    kept = fwd(*x, None, 1.0, "clip", None, None, cu, keep_walk=True, **save)
                    kept = {"walk": kept[-1], **({"wy": kept[3]} if op == "rdn" else {})}
                    passes.append((f"fwd, walk kept{tag}", setting(
                        lambda: fwd(*x, None, 1.0, "clip", None, None, cu, keep_walk=True, **save))))
                    passes.append((f"bwd, walk kept{tag}", setting(
                        lambda kept=kept: bwd(*x, None, 1.0, "clip", None, None, cu, do, None, None, **kept))))
                    del kept
                if args.api:
                    passes.append((f"fwd+bwd (API){tag}", setting(api_pass(op, x, do)[0])))
            for name, fn in passes:
                try:
                    times = profile(fn)
                except Exception as err:  # noqa: BLE001 -- report and go on; a kernel fault ends the process below
                    print(f"{op} B={B} T={T} H={H} K={K} {name}: failed: {type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}", flush=True)
                    torch.cuda.synchronize()  # raises again if the context is gone: nothing later could run
                    continue
                wall = f", {triton.testing.do_bench(fn, warmup=50, rep=300):.3f} ms wall" if args.wall else ""
                host, syncs = "", {}
                if args.host:
                    host_ms, syncs = host_time(fn)
                    host = f", {host_ms:.3f} ms host"
                print(f"{op} B={B} T={T} H={H} K={K} {name}: {sum(times.values()):.3f} ms GPU{wall}{host}", flush=True)
                if syncs:
                    print("    synchronizes at " + ", ".join(f"{site} ({n}x)" for site, n in syncs.most_common()),
                          flush=True)
                for kernel, ms in times.most_common(12):  # RDN's backward alone launches 8 kernels
                    print(f"    {ms:8.3f} ms  {kernel}", flush=True)
            del x, do, saved
            torch.cuda.empty_cache()
        for line in chosen_configs(op):
            print(line, flush=True)


if __name__ == "__main__":
    main()

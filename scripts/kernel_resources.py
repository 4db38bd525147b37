"""Registers, register-spill stack and shared memory of every RLA/RDN Triton kernel at a given shape, for
sm_90 (H100/H200), on a machine without a GPU: spills are the first suspect when a kernel is slow, and this
answers in minutes of CPU time instead of device time.

    .venv/bin/python scripts/kernel_resources.py [--ops rdn,rla] [--shape B,T,H,K] [--dtype bf16]
        [--kernels wy,dv] [--arch 90] [--sms 132] [--set NAME=INT ...] [--census] [--hazards] [--dump DIR]

How: the ops' host code runs on CPU tensors with every launch intercepted (nothing runs). Each launch is
compiled as Triton would compile it on the GPU: its own binder specialises the arguments (aligned pointers,
ints divisible by 16, ints equal to 1), once per autotune config, by the ptxas of this machine's Triton.
Prints one line per (kernel, config): warps, stages, registers a thread, the stack frame a thread (spilled
registers, mostly), shared bytes (Triton's allocation); a config's register cap (maxnreg) leads its constexprs.
This machine's Triton and ptxas (named in the header) are not the GPU machine's (Triton 3.6): compare versions of a
kernel with it, and time on the GPU. ``--census`` adds a second line a kernel: its SASS instructions counted by kind
(static counts of the whole kernel, not executed ones; a walk's loop is most of its code): tensor-core ops (HMMA:
mma.sync, HGMMA: wgmma), shared-memory loads/stores and barriers (the layout conversions between dots), global loads
and stores, local (spill) traffic, conversions (F2FP), then all of them and the longest loop's (a walk's step: Nsight
Compute's executed instructions a step of RDN's training walk, 1276 on the H200 on 2026-12-04, were exactly this
static count). Two versions of a kernel differ there before any GPU time: the
state reads of 2026-12-03 (docs/next/rdn-walk-state-reads.patch) show as their extra HMMA. ``--set DQKG_BV=32``
(repeatable) sets an int launch knob of each op's chunk module that has one (as gpu_check_rdn.py --set does): the
resources of a width profile_kernels.py --knob would time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)  # real JIT functions, whose launches are intercepted below

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rla_kernels.triton_utils import FIXED_CONFIG  # noqa: E402
from ttgir_hazards import async_dot_hazards  # noqa: E402  (this folder: sys.path[0] when run as a script)
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
launches: list[tuple] = []  # (JITFunction, args, kwargs, [configs])


def _autotuner_run(self, *args, **kwargs):
    launches.append((self.fn, args, _launch_kwargs(kwargs), self.configs))


def _jit_run(self, *args, **kwargs):
    kwargs = _launch_kwargs(kwargs)
    config = triton.Config({}, num_warps=kwargs.pop("num_warps", 4), num_stages=kwargs.pop("num_stages", 3),
                           maxnreg=kwargs.pop("maxnreg", None))
    launches.append((self, args, kwargs, [config]))


def _launch_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}


def _prepare(fn: JITFunction, args, kwargs, config, target):
    """What a launch would compile: Triton's own binder specialises the arguments (16-byte aligned pointers
    and ints divisible by 16 marked so, ints equal to 1 made constexpr) with the config's kwargs and options."""
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**kwargs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    # as JITFunction.run adds them before it binds: the same options, so the same compile (and cache key)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):  # Triton > 3.6
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    if config.maxnreg is not None:  # a register cap a thread (ptx .maxnreg)
        kwargs["maxnreg"] = config.maxnreg
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    key = (fn.__name__, repr(signature), repr(sorted(constexprs.items(), key=repr)), repr(attrs),
           config.num_warps, config.num_stages, config.maxnreg)
    shown = {fn.arg_names[path[0]]: v for path, v in constexprs.items()
             if v is not None and fn.params[path[0]].is_constexpr}
    return ASTSource(fn, signature, constexprs, attrs), options, key, shown


def _cuobjdump(cubin: bytes, tool: str, flag: str) -> str:
    """cuobjdump's text for one cubin (it reads files only)."""
    path = "/tmp/kernel_resources.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    return subprocess.run([tool, flag, path], capture_output=True, text=True).stdout


def _usage(cubin: bytes, tool: str) -> tuple[int, int]:
    text = _cuobjdump(cubin, tool, "--dump-resource-usage")
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", text).groups()
    return int(regs), int(stack)


# SASS opcode (without its modifiers) -> census column; unlisted opcodes only count in "all"
_CENSUS = {"HMMA": "HMMA", "HGMMA": "HGMMA", "LDS": "LDS", "LDSM": "LDS", "STS": "STS", "STSM": "STS", "BAR": "BAR",
           "SHFL": "SHFL", "LDG": "LDG", "LDGSTS": "LDG", "STG": "STG", "LDL": "LDL", "STL": "STL", "F2FP": "F2FP"}
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"^\S*\s+(0x[0-9a-f]+)")


def sass_rows(sass: str) -> list[tuple[int, str, str]]:
    """cuobjdump's SASS text as (address, opcode, operands) rows, in order."""
    return [(int(addr, 16), opcode, operands) for addr, opcode, operands in _SASS_LINE.findall(sass)]


def longest_loop(rows: list[tuple[int, str, str]]) -> int | None:
    """Instructions between the target of the farthest-reaching backward branch and that branch, inclusive: the hot
    loop's body (a walk's chunk step; unrolled by Triton, a chunk-parallel kernel's V loop has none). ``rows``:
    (address, opcode, operands) in order. Branches past the last EXIT are not loops: ptxas puts out-of-line code
    there (slow paths of a division, say) that jumps back into the body, which would read as a loop as long as the
    kernel."""
    body_end = max((addr for addr, opcode, _ in rows if opcode == "EXIT"), default=None)
    best = None
    for addr, opcode, operands in rows:
        if body_end is not None and addr > body_end:
            break
        target = _BRANCH_TARGET.match(operands) if opcode == "BRA" else None
        start = int(target.group(1), 16) if target else addr
        if start < addr and (best is None or addr - start > best[1] - best[0]):
            best = (start, addr)
    return None if best is None else sum(best[0] <= addr <= best[1] for addr, _, _ in rows)


def census(cubin: bytes, tool: str) -> str:
    """The kernel's SASS instructions counted by kind (_CENSUS), all of them, and its longest loop's (longest_loop;
    "-" without one), one line."""
    counts = {kind: 0 for kind in _CENSUS.values()}
    rows = sass_rows(_cuobjdump(cubin, tool, "-sass"))
    for _, opcode, _ in rows:
        if opcode in _CENSUS:
            counts[_CENSUS[opcode]] += 1
    loop = longest_loop(rows)
    return "  ".join(f"{k} {v}" for k, v in counts.items()) + f"  all {len(rows)}  loop {'-' if loop is None else loop}"


def plan_for(sms, arch=90):
    """Make the imported kernel modules' launchers plan for ``sms`` SMs (sm_count is 0 off a GPU) and, at ``arch``
    90 or more, for TMA (copy_engine_loads is False off a GPU)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("rla_kernels.") and hasattr(module, "sm_count"):
            module.sm_count = lambda device: sms
        if name.startswith("rla_kernels.") and hasattr(module, "copy_engine_loads"):
            module.copy_engine_loads = lambda device: arch >= 90


def run_ops(ops, shape, dtype, sms, arch=90):
    """Both passes of each op on CPU tensors (q, k, v in ``dtype``, fp32 gates as `bench kernels` makes them),
    with every kernel launch recorded instead of run; ``sms``: the SM count the launchers size grids by."""
    B, T, H, K = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, generator=gen).to(dtype) for _ in range(3))
    g = -torch.rand(B, T, H, generator=gen) * 0.1
    beta, gamma = torch.rand(B, T, H, generator=gen), torch.rand(B, T, H, generator=gen)
    do = torch.randn_like(v)
    for op in ops:
        chunk = __import__(f"rla_kernels.{op}.chunk", fromlist=["chunk"])
        plan_for(sms, arch)
        fwd, bwd = getattr(chunk, f"chunk_{op}_fwd"), getattr(chunk, f"chunk_{op}_bwd")
        # As the API runs it: the forward with autograd keeps its per-token tensors (RDN: U, W, X, with its chunk
        # matrices; kernels/library.py), so RDN's backward rebuilds its chunk states instead of rerunning its walk;
        # then with nothing kept (the rerun) and as recompute_states=False runs it (the whole walk kept). Launches
        # already seen compile once: for RDN the first pass's rows are the forward walk with X stored and the
        # rebuild, the second's the default forward walk and the rerun; RLA's rows are all the first pass's.
        saving = op == "rdn"
        for keep in ("keep_tokens", "", "keep_walk"):
            out = fwd(q, k, v, g, beta, gamma, None, 1.0, "clip", None, None, None,
                      **({keep: True} if keep else {}), **({"save_wy": True} if saving else {}))
            bwd(q, k, v, g, beta, gamma, None, 1.0, "clip", None, None, None, do, None, None,
                walk=out[-1] if keep else None, **({"wy": out[3]} if saving else {}))


def set_knobs(settings, ops):
    """--set: gpu_check_rdn.set_knobs on the ops' chunk modules (imported here only: gpu_check_rdn sets
    RLA_KERNELS_FIXED_CONFIG, which triton_utils read at this script's import, so every config is still reported)."""
    if not settings:
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_check_rdn import set_knobs as set_chunk_knobs
    set_chunk_knobs([__import__(f"rla_kernels.{op}.chunk", fromlist=["chunk"]) for op in ops], settings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="rdn,rla")
    parser.add_argument("--shape", default="16,2048,16,128", help="B,T,H,K (V = K); default: the benchmark's")
    parser.add_argument("--dtype", default="bf16", choices=sorted(_HALF))
    parser.add_argument("--kernels", default="", help="comma-separated substrings of kernel names to keep")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, 90 for the H100/H200")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="set an int launch knob of "
                        "the chunk module of each op that has it, e.g. DQKG_BV=32 (repeatable)")
    parser.add_argument("--sms", type=int, default=132, help="SM count the launchers plan for (132: H100/H200); "
                        "it decides the narrow walks and the segment cuts of long sequences at small batch")
    parser.add_argument("--census", action="store_true", help="also count each kernel's SASS instructions by kind")
    parser.add_argument("--hazards", action="store_true", help="also name each shared buffer that an async copy or "
                        "store may overwrite, and each register operand a loop may redefine, while an asynchronous "
                        "wgmma still reads it (a race; async_dot_hazards)")
    parser.add_argument("--dump", metavar="DIR", help="also write each compiled kernel's TTGIR and SASS to DIR (one "
                        "file pair a kernel and config, named by its row's order), to diff two versions of a kernel")
    args = parser.parse_args()
    if FIXED_CONFIG:
        print("note: RLA_KERNELS_FIXED_CONFIG=1 is set: only each kernel's first config is reported")
    set_knobs(args.set, args.ops.split(","))
    Autotuner.run = _autotuner_run
    JITFunction.run = _jit_run
    run_ops(args.ops.split(","), [int(x) for x in args.shape.split(",")], _HALF[args.dtype], args.sms, args.arch)
    target = GPUTarget("cuda", args.arch, 32)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    ptxas = subprocess.run([os.path.join(os.path.dirname(tool), "ptxas"), "--version"], capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    print(f"triton {triton.__version__} ({ptxas}), sm_{args.arch}, shape {args.shape}, {args.dtype}")
    print(f"{'kernel':28s} {'warps':>5s} {'stages':>6s} {'regs':>5s} {'stack B':>8s} {'shared B':>9s}  constexprs")
    wanted = [w for w in args.kernels.split(",") if w]
    seen = set()
    for fn, fn_args, kwargs, configs in launches:
        name = fn.__name__
        if wanted and not any(w in name for w in wanted):
            continue
        for config in configs:
            src, options, key, shown = _prepare(fn, fn_args, kwargs, config, target)
            if key in seen:
                continue
            seen.add(key)
            compiled = triton.compile(src, target=target, options=options.__dict__)
            regs, stack = _usage(compiled.asm["cubin"], tool)
            if config.maxnreg is not None:
                shown = {"maxnreg": config.maxnreg, **shown}
            print(f"{name:28s} {config.num_warps:5d} {config.num_stages:6d} {regs:5d} {stack:8d} "
                  f"{compiled.metadata.shared:9d}  {shown}", flush=True)
            if args.census:
                print(f"{'':28s} SASS: {census(compiled.asm['cubin'], tool)}", flush=True)
            if args.hazards:
                for hazard in async_dot_hazards(compiled.asm["ttgir"]):
                    print(f"{'':28s} HAZARD: {hazard}", flush=True)
            if args.dump:
                stem = os.path.join(args.dump, f"{len(seen):02d}-{name}-w{config.num_warps}s{config.num_stages}")
                os.makedirs(args.dump, exist_ok=True)
                with open(stem + ".ttgir", "w") as f:
                    f.write(compiled.asm["ttgir"])
                with open(stem + ".sass", "w") as f:
                    f.write(_cuobjdump(compiled.asm["cubin"], tool, "-sass"))
                print(f"{'':28s} written: {stem}.ttgir, .sass", flush=True)

if __name__ == "__main__":
    main()

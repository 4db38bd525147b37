"""Compile, all at once on every core, the Triton kernels that a GPU-machine call is about to run, into Triton's cache
(rla_kernels.compile_log says why and how): the call's processes then load them instead of compiling one at a time.

    python3 scripts/warm_kernels.py LOG [LOG ...] [--threads N] [--modules PREFIX,...]   # on the GPU machine
    .venv/bin/python scripts/warm_kernels.py --record LOG [--ops rdn,rla] [--shapes B,T,H,K ...] [--dtype bf16]
        [--workloads bench,checks] [--set NAME=INT ...] [--arch 90] [--sms 132]   # here, without a GPU

A LOG is what a process run with RLA_KERNELS_COMPILE_LOG=LOG compiled (scripts/gpu_session.sh writes
$OUT/compiles.jsonl; docs/next/compiles.jsonl is the last call's). ``--record`` writes one without a GPU: both passes
of each op at each shape (the benchmark's calls by default), and the float64 checks' cases (``--workloads``), on CPU
tensors with every launch intercepted (scripts/kernel_resources.py's recording; every autotune config unless
RLA_KERNELS_FIXED_CONFIG=1), each launch specialised by Triton's own binder as the JIT would on sm_ARCH; run it with
the GPU machine's Triton (3.6: PYTHONPATH=/tmp/t36) so that the compile options are that version's.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BENCH_SHAPES = tuple(f"{32768 // t},{t},16,128" for t in (2048, 4096, 8192, 16384, 32768))  # `bench kernels`' calls


def launch_records(launches, target) -> list[str]:
    """Compile log lines for recorded launches (kernel_resources.py's (fn, args, kwargs, configs)), each launch and
    config specialised by Triton's own binder as the JIT would on ``target`` (kernel_resources._prepare), once."""
    import kernel_resources as kr  # (pops TRITON_INTERPRET before Triton's import: real JIT functions)
    from triton.runtime.jit import serialize_specialization_data

    from rla_kernels.compile_log import record_line

    with_target = "target" in inspect.signature(serialize_specialization_data).parameters  # Triton > 3.6
    seen, lines = set(), []
    for fn, args, kwargs, configs in launches:
        for config in configs:
            src, options, key, _ = kr._prepare(fn, args, kwargs, config, target)
            if key in seen:
                continue
            seen.add(key)
            data = serialize_specialization_data(fn._fn_name, src.signature, src.constants, src.attrs, options,
                                                 repr(key), *((target,) if with_target else ()))
            lines.append(record_line(fn.fn.__module__, fn.fn.__qualname__, data))
    return lines


def _check_cases(sms):
    """The float64 checks' kernel calls (gpu_check_rdn.py --all, each case as its default and keep rows, and its
    segmented cases; gpu_check_rla.py's cases, default and keep rows) on CPU tensors, at their own shapes."""
    import gpu_check_rdn
    import gpu_check_rla
    import kernel_resources as kr

    for module in (gpu_check_rdn, gpu_check_rla):
        module.DEVICE = "cpu"
    kr.plan_for(sms)
    cases, segmented = gpu_check_rdn.case_lists(full=True)
    for _, kw in cases:
        for keep in (False, True):
            gpu_check_rdn.check(**kw, keep=keep, compare=False)
    for _, kw in segmented:
        gpu_check_rdn.check_segmented(**kw, compare=False)
    for name, *case in gpu_check_rla.CASES:
        for keep in (False, True):
            gpu_check_rla.run_case(name, *case, keep=keep, compare=False)


WORKLOADS = ("bench", "checks")


def record(path, workloads, ops, shapes, dtype, arch, sms, settings=()) -> int:
    """Write the compile records of ``workloads`` to ``path``: "bench", both passes of ``ops`` at ``shapes``;
    "checks", the float64 checks' cases (_check_cases) at their fixed configs; ``settings`` (NAME=INT) set the ops'
    launch knobs first, as gpu_check_rdn.py --set and profile_kernels.py --knob do. Returns how many."""
    import kernel_resources as kr
    from triton.backends.compiler import GPUTarget

    kr.set_knobs(list(settings), ops)
    kr.Autotuner.run = kr._autotuner_run
    kr.JITFunction.run = kr._jit_run
    if "bench" in workloads:
        for shape in shapes:
            kr.run_ops(ops, shape, kr._HALF[dtype], sms)
    if "checks" in workloads:
        first = len(kr.launches)
        _check_cases(sms)
        # the checks run on fixed configs (RLA_KERNELS_FIXED_CONFIG=1, which both set unless tuning): the first
        kr.launches[first:] = [(fn, args, kwargs, configs[:1]) for fn, args, kwargs, configs in kr.launches[first:]]
    lines = launch_records(kr.launches, GPUTarget("cuda", arch, 32))
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
    return len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="*", help="compile logs to compile from (RLA_KERNELS_COMPILE_LOG's files)")
    parser.add_argument("--threads", type=int, default=0, help="compile threads (default: every core)")
    parser.add_argument("--modules", default="", help="comma-separated module prefixes: warm only their kernels, e.g. "
                        "rla_kernels.rla,fla.ops.common.chunk_h (gpu_session.sh: WARM_MODULES)")
    parser.add_argument("--record", metavar="LOG", help="write a log without a GPU instead (the options below)")
    parser.add_argument("--workloads", default="bench,checks", help="what --record runs: bench (--ops at --shapes), "
                        "checks (the float64 checks' cases, gpu_check_rdn.py --all and gpu_check_rla.py)")
    parser.add_argument("--ops", default="rdn,rla")
    parser.add_argument("--shapes", nargs="+", default=list(BENCH_SHAPES), help="B,T,H,K (V = K); default: the "
                        "benchmark's five calls")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--arch", type=int, default=90, help="compute capability, 90 for the H100/H200")
    parser.add_argument("--sms", type=int, default=132, help="SM count the launchers plan for (132: H100/H200)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="with --record: set an int "
                        "launch knob of each op's chunk module first, e.g. BWD_STATE_EVERY=2 (repeatable)")
    args = parser.parse_args(argv)
    if args.record:
        try:
            shapes = [[int(x) for x in s.split(",")] for s in args.shapes]
            if any(len(s) != 4 or min(s) < 1 for s in shapes):
                raise ValueError
        except ValueError:
            parser.error(f"--shapes takes B,T,H,K with four positive ints each; got {' '.join(args.shapes)}")
        workloads = args.workloads.split(",")
        if not workloads or any(w not in WORKLOADS for w in workloads):
            parser.error(f"--workloads takes a comma-separated list of {', '.join(WORKLOADS)}; got {args.workloads!r}")
        n = record(args.record, workloads, args.ops.split(","), shapes, args.dtype, args.arch, args.sms, args.set)
        print(f"{n} compile records written to {args.record}")
        return 0
    if not args.logs:
        parser.error("give the compile logs to compile from, or --record LOG")
    from rla_kernels.compile_log import read, warm

    missing = [p for p in args.logs if not os.path.isfile(p)]
    if missing:
        parser.error(f"no such compile log: {', '.join(missing)}")
    modules = [m for m in args.modules.split(",") if m]
    try:
        records = read(args.logs, modules)
    except ValueError as e:
        print(f"warm_kernels.py: {e}", file=sys.stderr)
        return 2
    if modules and not records:  # a prefix that matches nothing is most likely misspelt: say so, compile nothing
        print(f"warm_kernels.py: no record of {', '.join(args.logs)} is in a module starting with "
              f"{', '.join(modules)}; modules look like rla_kernels.rla.chunk_bwd or fla.ops.common.chunk_h",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    done, skipped = warm(records, args.threads or None)
    for line in skipped[:10]:
        print(f"skipped {line}")
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more skipped")
    seconds = time.perf_counter() - start
    print(f"{done} of {len(records)} kernels compiled or found in Triton's cache in {seconds:.1f} s on "
          f"{args.threads or os.cpu_count()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a converted model's prefill and decode step spend their time: host vs device, kernels per call.

    . scripts/gpu_env.sh && python3 scripts/profile_model.py [--contexts 1024,4096] [--variant rdn] [--top 25]
        [--models teacher,converted] [--python] [--no-decode] [--segments auto,1] [--prep auto,off]

Builds a randomly initialised Llama with SmolLM2-135M's configuration (speed does not depend on the
weights, and no download or GGUF is needed), converts it, and for the teacher and the converted model
prints per call: wall ms (host clock around a synchronised call), GPU ms (sum of kernel times), kernel
launches, then the converted model's busiest host ops (self CPU time). A wall time far above the GPU
time means the call is bound by Python and launch overhead, not by the kernels. ``--segments auto,1``
profiles the converted prefill once per RDN segment rule: the launcher's choice, then fixed counts;
``--prep auto,off`` profiles the converted model with the layers' one-launch q/k feature map and gates (auto:
used on CUDA for inference) and without them (their PyTorch ops).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import importlib
import pstats
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rla_convert.compat import cache_argument, output_cache
from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.layers import ResidualAttention

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                    tie_word_embeddings=True, rms_norm_eps=1e-5)


def wall_ms(fn, iters=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def profile(fn, iters=3):
    fn()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    gpu_ms, launches, host = 0.0, 0, collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            gpu_ms += e.device_time / 1000
            launches += 1
        else:
            host[e.name[:70]] += e.self_cpu_time_total / 1000
    return gpu_ms / iters, launches / iters, {k: v / iters for k, v in host.items()}


def python_profile(fn, top, iters=3):
    """Python functions by own time (cProfile), per call: where the host time goes, launcher by launcher."""
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    rows = pstats.Stats(prof).stats.items()  # (file, line, name) -> (calls, prim calls, tottime, cumtime, callers)
    for (path, line, func), (calls, _, tottime, cumtime, _) in sorted(rows, key=lambda kv: -kv[1][2])[:top]:
        where = "/".join(path.rsplit("/", 2)[-2:]) + f":{line}"
        print(f"    {tottime / iters * 1e3:8.3f} ms own {cumtime / iters * 1e3:8.3f} ms cum {calls // iters:6d} calls  {func}  {where}")


def report(name, what, fn, top, python=False):
    wall = wall_ms(fn)
    gpu, launches, host = profile(fn)
    print(f"{name:10s} {what:12s} wall {wall:8.2f} ms  GPU {gpu:8.2f} ms  kernels {launches:7.0f}", flush=True)
    for op, ms in sorted(host.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {ms:8.3f} ms host  {op}")
    if python and top:
        python_profile(fn, top)


@contextlib.contextmanager
def segment_rule(rule: str):
    """The RDN forward's segment count: the launcher's own choice ('auto') or a fixed count."""
    chunk = importlib.import_module("rla_kernels.rdn.chunk")
    chosen = chunk.auto_segments
    if rule != "auto":
        chunk.auto_segments = lambda *args, **kwargs: int(rule)
    try:
        yield
    finally:
        chunk.auto_segments = chosen


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--models", default="teacher,converted")
    parser.add_argument("--variant", default="rdn")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--python", action="store_true", help="also the Python functions by own time (cProfile)")
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--segments", default="auto", help="RDN forward segment rules to compare: auto and/or counts")
    parser.add_argument("--prep", default="auto", help="the layers' q/k feature map and gates: auto (one launch each "
                        "on CUDA) and/or off (PyTorch ops)")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(torch.bfloat16)
    converted = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(torch.bfloat16)
    converted.load_state_dict(teacher.state_dict())
    converted = convert_model(converted, ConversionConfig(variant=args.variant)).model
    for name, model in (("teacher", teacher), ("converted", converted)):
        if name not in args.models.split(","):
            continue
        model.cuda().eval()
        top = args.top if name == "converted" else 0
        for prep in args.prep.split(",") if name == "converted" else ["auto"]:
            ResidualAttention.fused_prep = None if prep == "auto" else False
            tag = "" if prep == "auto" else " prep=off"
            for context in map(int, args.contexts.split(",")):
                ids = torch.randint(3, SMOLLM2_135M["vocab_size"], (1, context), device="cuda")
                for rule in args.segments.split(",") if name == "converted" else ["auto"]:
                    with segment_rule(rule):
                        report(name, f"prefill {context}" + (f" P={rule}" if rule != "auto" else "") + tag,
                               lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), top, args.python)
                if args.no_decode:
                    continue
                cache = output_cache(model(input_ids=ids, use_cache=True, logits_to_keep=1))
                token, cache_kw = ids[:, -1:], {cache_argument(model): cache}
                # Decode steps re-feed one token to the same cache: the teacher's KV grows by a token a call.
                report(name, f"decode {context}{tag}", lambda: model(input_ids=token, use_cache=True, **cache_kw),
                       top, args.python)
        model.cpu()


if __name__ == "__main__":
    main()

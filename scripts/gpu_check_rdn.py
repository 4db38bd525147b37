"""GPU check of the RDN Triton chunk kernels (kernels/rdn/chunk.py) against the float64 oracle.

Run on the GPU machine from the repository root, in one call:

    . scripts/gpu_env.sh && python3 scripts/gpu_check_rdn.py [--all] [--time] [--tune] [--keep | --no-keep]
        [--rerun] [--set NAME=INT ...]

By default three cases (fp32 K=128, bf16 K=64 tanh, bf16 K=128 varlen); ``--all`` adds four more. Each case runs
twice: as the API runs by default with autograd (the forward keeps its walk's U, W, X, ``keep_tokens``, and the
backward rebuilds the chunk states from U and W) and, as ``keep`` rows, with the whole walk kept (``keep_walk``, the
API's ``rdn(recompute_states=False)``: the backward takes the forward's h_s, h_r, U, W, X); both forwards walk at the
rerun's precision, so o must pass either way. ``--keep`` runs only the
keep rows, ``--no-keep`` none of them. ``--rerun`` adds ``rerun`` rows: the backward handed no walk, which reruns the
forward's walk at that precision (a forward at another chunk size, or chunk_rdn_bwd called without ``walk=``). Each
case is a new kernel variant, and the backward kernel is large: compile time dominates, so the seconds
column is worth reading. ``--time`` adds one rough timing, ``--tune`` autotunes (slower still). ``--set
WALK_STAGES=2`` (repeatable) sets an int launch knob of rla_kernels.rdn.chunk first (WALK_STAGES, GRAD_BK, OUT_BV,
...): the check of a setting that profile_kernels.py --knob found faster; case names get it.

For each case it runs chunk_rdn_fwd and chunk_rdn_bwd and prints the relative error ||x - ref|| / ||ref||
of o, both final states and all eight gradients against naive_recurrent_rdn in float64 on the same GPU
(autograd for the gradients). Pass: fp32 under 1e-3, bf16 under 1e-2, nothing non-finite. Exit status 1
if a case fails.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time

# One compile per kernel variant keeps the check short; --tune checks the autotuned configs, which production runs
# (set either way: gpu_session.sh's rdn part exports 1, and a --tune run under it checked the first configs unsaid).
os.environ["RLA_KERNELS_FIXED_CONFIG"] = "0" if "--tune" in sys.argv else "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _import_kernels():
    """rla_kernels as installed, else straight from ./kernels (the package is the folder renamed)."""
    try:
        import rla_kernels  # noqa: F401
    except ImportError:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels")
        spec = importlib.util.spec_from_file_location("rla_kernels", os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["rla_kernels"] = module
        spec.loader.exec_module(module)
    from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd
    from rla_kernels.rdn.naive import naive_recurrent_rdn
    return chunk_rdn_fwd, chunk_rdn_bwd, naive_recurrent_rdn


chunk_rdn_fwd, chunk_rdn_bwd, naive_recurrent_rdn = _import_kernels()
NAMES = ["o", "S_T", "R_T", "dq", "dk", "dv", "dg", "dbeta", "dgamma", "dS0", "dR0"]


DEVICE = "cuda"  # scripts/warm_kernels.py --record runs the cases' kernel calls on CPU tensors, launches intercepted


def make_inputs(B, T, H, K, V, N, dtype):
    q = F.normalize(torch.randn(B, T, H, K, device=DEVICE), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, device=DEVICE), dim=-1)
    v = 3.0 * torch.randn(B, T, H, V, device=DEVICE)
    g = F.logsigmoid(torch.randn(B, T, H, device=DEVICE) + 3.0)
    beta, gamma = torch.rand(B, T, H, device=DEVICE), torch.rand(B, T, H, device=DEVICE)
    S0 = 0.5 * torch.randn(N, H, K, V, device=DEVICE)
    R0 = 0.3 * torch.randn(N, H, K, V, device=DEVICE)
    return [x.to(dtype) for x in (q, k, v, g, beta, gamma)], S0, R0


def knob_values(chunk, given: str, flag: str, single: bool = False) -> tuple[str, list[int]]:
    """``NAME=V1,V2`` (``NAME=INT`` when ``single``) for an int launch knob of ``chunk``, an op's chunk module: the
    name and the ints; else one line naming what is accepted, and exit. For --set here and profile_kernels --knob."""
    name, _, values = given.partition("=")
    ints = [v for v in values.split(",") if v]
    if (not isinstance(getattr(chunk, name, None), int) or not ints or (single and len(ints) > 1)
            or not all(v.lstrip("-").isdigit() for v in ints)):
        sys.exit(f"{flag} takes NAME={'INT' if single else 'V1,V2'} for an int knob of {chunk.__name__}; "
                 f"got {given!r}")
    return name, [int(v) for v in ints]


def set_knobs(chunks, settings) -> None:
    """--set: each ``NAME=INT`` of ``settings`` on every chunk module of ``chunks`` with an int of that name
    (knob_values' line and exit when none has it). The one place the check scripts and kernel_resources.py set knobs."""
    for given in settings:
        name = given.partition("=")[0]
        for chunk in [c for c in chunks if isinstance(getattr(c, name, None), int)] or chunks[:1]:
            name, (value,) = knob_values(chunk, given, "--set", single=True)
            setattr(chunk, name, value)


def rel(x, ref):
    x = x.double()
    if not torch.isfinite(x).all():
        return float("nan")
    return ((x - ref).norm() / ref.norm()).item()


def check(B, T, H, K, dtype, clip, residual, cu=None, keep=False, rerun=False, compare=True):
    """The case's errors against the oracle, and its seconds; without ``compare``, only its kernel calls (None)."""
    N = B if cu is None else len(cu) - 1
    inputs, S0, R0 = make_inputs(B, T, H, K, K, N, dtype)
    do = torch.randn_like(inputs[2])
    dS_T, dR_T = torch.randn_like(S0), torch.randn_like(R0)
    start = time.time()
    # As the API (kernels/library.py) does with autograd: the backward takes the forward's chunk matrices and its
    # walk's per-token tensors (with keep its whole walk)
    if rerun:
        (o, S, R, wy), walk = chunk_rdn_fwd(*inputs, None, clip, residual, S0, R0, cu, save_wy=True), None
    else:
        o, S, R, wy, walk = chunk_rdn_fwd(*inputs, None, clip, residual, S0, R0, cu, save_wy=True, keep_walk=keep,
                                          keep_tokens=True)
    grads = chunk_rdn_bwd(*inputs, None, clip, residual, S0, R0, cu, do, dS_T, dR_T, wy=wy, walk=walk)
    if not compare:
        return None
    torch.cuda.synchronize()
    seconds = time.time() - start  # mostly compile on a new variant

    leaves = [x.double().requires_grad_() for x in inputs + [S0, R0]]
    o_ref, (S_ref, R_ref) = naive_recurrent_rdn(*leaves[:6], None, clip, residual, (leaves[6], leaves[7]), True,
                                                None if cu is None else cu.long())
    refs = torch.autograd.grad([o_ref, S_ref, R_ref], leaves, [do.double(), dS_T.double(), dR_T.double()])
    errs = [rel(x, r) for x, r in zip([o, S, R, *grads], [o_ref, S_ref, R_ref, *refs])]
    return errs, seconds


def check_segmented(B, T, H, K, V, dtype, segments, compare=True):
    """The forward with each sequence cut into segments (kernels/rdn/segmented.py; None: as many as
    chunk_rdn_fwd picks on this GPU) against the oracle (``compare``, as check's)."""
    inputs, S0, R0 = make_inputs(B, T, H, K, V, B, dtype)
    start = time.time()
    o, S, R = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, segments=segments)
    if not compare:
        return None
    torch.cuda.synchronize()
    seconds = time.time() - start
    with torch.no_grad():
        d = [x.double() for x in inputs]
        o_ref, (S_ref, R_ref) = naive_recurrent_rdn(*d, None, 1.0, "clip", (S0.double(), R0.double()), True)
    return [rel(o, o_ref), rel(S, S_ref), rel(R, R_ref)], seconds


def cuda_ms(fn, reps=5):
    """Mean GPU milliseconds of ``fn`` over ``reps`` calls, after one untimed call (compiling, tuning)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def case_lists(full: bool) -> tuple[list, list]:
    """The checked cases (name, check's keywords) and the segmented ones (name, check_segmented's); ``full``: --all's
    four more."""
    cu = torch.tensor([0, 1, 130, 200, 517], dtype=torch.int32, device=DEVICE)
    cases = [
        ("fp32 K=128 clip", dict(B=2, T=300, H=4, K=128, dtype=torch.float32, clip=1.0, residual="clip")),
        ("bf16 K=64 tanh", dict(B=2, T=300, H=4, K=64, dtype=torch.bfloat16, clip=0.7, residual="tanh")),
        ("bf16 K=128 varlen", dict(B=1, T=517, H=4, K=128, dtype=torch.bfloat16, clip=1.0, residual="clip", cu=cu)),
    ]
    if full:
        cases += [
            ("fp32 K=64 clip", dict(B=2, T=300, H=4, K=64, dtype=torch.float32, clip=1.0, residual="clip")),
            ("bf16 K=128 clip", dict(B=2, T=300, H=4, K=128, dtype=torch.bfloat16, clip=1.0, residual="clip")),
            ("fp32 K=128 none", dict(B=2, T=300, H=4, K=128, dtype=torch.float32, clip=None, residual="clip")),
            ("fp32 K=128 varlen", dict(B=1, T=517, H=4, K=128, dtype=torch.float32, clip=1.0, residual="clip",
                                       cu=cu)),
        ]
    segmented = [
        ("seg bf16 K=64 P=4", dict(B=1, T=1500, H=4, K=64, V=64, dtype=torch.bfloat16, segments=4)),
        ("seg fp32 K=128 P=3", dict(B=2, T=700, H=2, K=128, V=128, dtype=torch.float32, segments=3)),
        ("seg bf16 K=48 V=80", dict(B=2, T=900, H=3, K=48, V=80, dtype=torch.bfloat16, segments=5)),
        ("seg bf16 K=64 P=8", dict(B=1, T=4096, H=9, K=64, V=64, dtype=torch.bfloat16, segments=8)),
    ]
    return cases, segmented


def run_case(name, checker, kw, columns):
    """One case's row (``columns`` labels its errors, or None for the header's); False if it failed."""
    try:
        errs, seconds = checker(**kw)
    except Exception as error:  # noqa: BLE001 -- e.g. out of shared memory on this GPU: report it, go on
        print(f"{name:23s} ERROR {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
        return False
    tol = 1e-3 if kw["dtype"] == torch.float32 else 1e-2
    worst = max(errs) if all(e == e for e in errs) else float("nan")
    ok = worst == worst and worst < tol
    cells = " ".join(f"{e:8.1e}" if columns is None else f"{c} {e:8.1e}" for c, e in zip(columns or errs, errs))
    print(f"{name:23s} {cells} {worst:8.1e} {'ok' if ok else 'FAIL':>5s} {seconds:5.1f}", flush=True)
    return ok


def prefill_timing():
    """SmolLM2-135M's 32k prefill shape (B=1, 9 heads, head dim 64): forward with the fused walk against the
    automatic segment count and fixed counts around it."""
    inputs, _, _ = make_inputs(1, 32768, 9, 64, 64, 1, torch.bfloat16)
    out = {}
    for name, segments in (("fused", 1), ("auto", None), ("P=8", 8), ("P=16", 16), ("P=32", 32)):
        out[name] = cuda_ms(lambda: chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, None, segments=segments))
    return "bf16 B=1 T=32768 H=9 D=64 forward ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in out.items())


def rough_timing():
    B, T, H, D = 4, 2048, 16, 128
    inputs, S0, R0 = make_inputs(B, T, H, D, D, B, torch.bfloat16)
    do = torch.randn_like(inputs[2])

    def fwd():
        return chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, None, save_wy=True)

    def fwd_bwd():  # as the API with autograd: the per-token tensors kept
        _, _, _, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, None, save_wy=True,
                                            keep_tokens=True)
        return chunk_rdn_bwd(*inputs, None, 1.0, "clip", None, None, None, do, None, None, wy=wy, walk=tokens)

    def fwd_keep():
        return chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, None, save_wy=True, keep_walk=True)

    def fwd_bwd_keep():
        _, _, _, wy, walk = fwd_keep()
        return chunk_rdn_bwd(*inputs, None, 1.0, "clip", None, None, None, do, None, None, wy=wy, walk=walk)

    out = {name: cuda_ms(fn) for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd), ("fwd keep", fwd_keep),
                                              ("fwd+bwd keep", fwd_bwd_keep))}
    return f"bf16 B={B} T={T} H={H} D={D}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in out.items())


FLAGS = ("--all", "--time", "--tune", "--keep", "--no-keep", "--rerun")
OPTIONS = ("--set", "--case")  # each takes the next argument


def bad_arguments(argv: list[str]) -> str | None:
    """One line on the first argument this script does not take (it reads sys.argv by hand), else None."""
    i = 0
    while i < len(argv):
        if argv[i] in OPTIONS and i + 1 < len(argv):
            i += 2
            continue
        if argv[i] not in FLAGS:
            what = f"{argv[i]} needs a value" if argv[i] in OPTIONS else f"unknown argument {argv[i]!r}"
            return f"gpu_check_rdn.py: {what}; it takes {' '.join(FLAGS)} and {' '.join(o + ' VALUE' for o in OPTIONS)}"
        i += 1
    return None


def main():
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return 0
    problem = bad_arguments(sys.argv[1:])
    if problem is None and not torch.cuda.is_available():
        problem = "gpu_check_rdn.py needs a CUDA GPU and torch sees none (run it on the GPU machine: README)"
    if problem:
        print(problem, file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cases, segmented = case_lists("--all" in sys.argv)
    if "--case" in sys.argv:  # keep only the cases whose name contains the given text
        wanted = sys.argv[sys.argv.index("--case") + 1]
        cases = [c for c in cases if wanted in c[0]]
        segmented = [c for c in segmented if wanted in c[0]]
    chunk = sys.modules["rla_kernels.rdn.chunk"]
    settings = [sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "--set"]  # bad_arguments: each has one
    set_knobs([chunk], settings)
    tag = "".join(" " + given for given in settings)
    cases = [(case + tag, kw) for case, kw in cases]
    segmented = [(case + tag, kw) for case, kw in segmented]
    print(f"torch {torch.__version__}, triton {__import__('triton').__version__}, {torch.cuda.get_device_name()}")
    print(f"{'case':23s} " + " ".join(f"{n:>8s}" for n in NAMES) + "   max     pass   s")
    suffixes = [" keep"] if "--keep" in sys.argv else [""] if "--no-keep" in sys.argv else ["", " keep"]
    suffixes += [" rerun"] if "--rerun" in sys.argv else []
    results = [run_case(name + suffix, check, dict(kw, keep=suffix == " keep", rerun=suffix == " rerun"), None)
               for name, kw in cases for suffix in suffixes]
    results += [run_case(name, check_segmented, kw, ["o", "S_T", "R_T"]) for name, kw in segmented]
    failed = not all(results)
    if "--time" in sys.argv:
        print(rough_timing())
        print(prefill_timing())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers for the kernel tests: model-like random inputs, and which Triton kernels a call launches, and with
what."""
import torch
import torch.nn.functional as F


def make_inputs(B, T, H, K, V, N=None, dtype=torch.float32, device="cpu", value_scale=3.0, gates_in_dtype=True):
    """Model-like inputs: q, k unit norm (SiLU + L2 norm in the layer), decays near 1, gates in (0, 1), values large
    enough to clip; fresh draws from the global generator. ``([q, k, v, g, beta, gamma], S0, R0)``: q, k, v in
    ``dtype``, the three gates too unless ``gates_in_dtype`` is false (fp32), the initial states fp32 [N, H, K, V]."""
    N = B if N is None else N
    q = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1)
    v = value_scale * torch.randn(B, T, H, V, device=device)
    g = F.logsigmoid(torch.randn(B, T, H, device=device) + 3.0)
    beta = torch.rand(B, T, H, device=device)
    gamma = torch.rand(B, T, H, device=device)
    S0 = 0.5 * torch.randn(N, H, K, V, device=device)
    R0 = 0.3 * torch.randn(N, H, K, V, device=device)
    gates = [x.to(dtype) if gates_in_dtype else x for x in (g, beta, gamma)]
    return [x.to(dtype) for x in (q, k, v)] + gates, S0, R0


class _Recorded:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` notes the launch's keyword arguments, then launches."""

    def __init__(self, kernel, note):
        self.kernel, self.note = kernel, note

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.note(kw)
            return self.kernel[grid](*args, **kw)
        return launch


def record_launches(monkeypatch, module, names, entry=lambda name, kw: name) -> list:
    """Wrap each kernel ``module.<name>`` so that its launches run as before and append ``entry(name, kwargs)``
    to the list returned (one list for all of them, in launch order)."""
    log = []
    for name in names:
        monkeypatch.setattr(module, name, _Recorded(getattr(module, name),
                                                    lambda kw, name=name: log.append(entry(name, kw))))
    return log


class _ArgDtypes:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` notes the dtypes of its positional arguments at
    ``positions`` (those given as tensors), then launches."""

    def __init__(self, kernel, name, positions, log):
        self.kernel, self.name, self.positions, self.log = kernel, name, positions, log

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.log.append((self.name, {args[i].dtype for i in self.positions if args[i] is not None}))
            return self.kernel[grid](*args, **kw)
        return launch


def record_arg_dtypes(monkeypatch, module, positions: dict) -> list:
    """Wrap each kernel ``module.<name>`` of ``positions`` ({name: argument positions}) so that its launches run as
    before and append ``(name, {dtypes of those arguments})`` to the list returned, in launch order."""
    log = []
    for name, where in positions.items():
        monkeypatch.setattr(module, name, _ArgDtypes(getattr(module, name), name, where, log))
    return log


class _Stub:
    """Stands in for a Triton kernel whose launches do nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kw: None


def stub_launches(monkeypatch, module, names) -> None:
    """Replace each kernel ``module.<name>`` by one whose launches do nothing: only the host code runs."""
    for name in names:
        monkeypatch.setattr(module, name, _Stub())


# RDN's forward walk kernels (rdn/chunk.py _walk picks one by width): a test that watches or forbids the walk names both.
RDN_FORWARD_WALKS = ("_rdn_walk_kernel", "_rdn_walk_t_kernel")


def walk_stores(name, kw):
    """RDN's forward walk launch as STORE_X: whether it stored X for a backward (U and W it always stores)."""
    return kw["STORE_X"]


def graph_replayed(fn):
    """``fn()``'s outputs as a CUDA graph of it replays them: warmed up (compiles, autotuning) on a side stream, then
    captured, then replayed once. A launch on a stream the capture never joins fails the capture."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    graph.replay()
    torch.cuda.synchronize()
    return outputs

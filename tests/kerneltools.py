"""Shared helpers for the kernel tests: which Triton kernels a call launches, and with what."""


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


class _Stub:
    """Stands in for a Triton kernel whose launches do nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kw: None


def stub_launches(monkeypatch, module, names) -> None:
    """Replace each kernel ``module.<name>`` by one whose launches do nothing: only the host code runs."""
    for name in names:
        monkeypatch.setattr(module, name, _Stub())


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

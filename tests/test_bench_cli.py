"""`rla-convert bench kernels`: the command path on the CPU (smoke mode), rendering, failures, fla's guard."""
import json
import sys
import types

import pytest
import torch

from clitools import one_error_line, run_main
from rla_convert.bench import kernels as bench_kernels
from rla_convert.bench import plot
from rla_kernels import naive_recurrent_rdn, naive_recurrent_rla


def api_available() -> bool:
    try:
        from rla_kernels import api  # noqa: F401
    except ImportError:
        return False
    return True


def test_without_cuda_it_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, _, err = run_main(capsys, "bench", "kernels")
    assert status == 2
    line = one_error_line(err)
    assert "CUDA" in line and "--cpu-smoke" in line


def test_cpu_smoke_writes_table_json_markdown_and_plot(capsys, tmp_path):
    paths = {name: tmp_path / name for name in ("r.json", "r.md", "r.png")}
    status, out, _ = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--no-progress", "--json",
                              str(paths["r.json"]), "--markdown", str(paths["r.md"]), "--plot", str(paths["r.png"]))
    assert status == 0
    doc = json.loads(paths["r.json"].read_text())
    points = doc["points"]
    # 2 lengths x 7 ops x 2 modes, then 2 contexts x 4 decode ops.
    assert len(points) == 2 * 7 * 2 + 2 * 4
    assert {p["op"] for p in points if p["mode"] != "decode"} >= {"rla", "rdn", "rla_keep", "rdn_keep"}
    for p in points:
        if p["op"] == "sdpa_flash":
            assert p["error"] is None and p["ms"] > 0, p
        elif p["op"].startswith("fla_"):
            assert "need CUDA" in p["error"]
        elif api_available():
            assert p["error"] is None and p["ms"] > 0, p
        else:  # the public op is written by someone else; until it lands the point says so and the run goes on
            assert "rla_kernels.api is missing" in p["error"], p
    sdpa_decode = sorted((p["seq_len"], p["state_mb"]) for p in points if p["mode"] == "decode" and p["op"] == "sdpa_flash")
    assert sdpa_decode[1][1] > sdpa_decode[0][1]  # a KV cache grows with the context
    assert "SDPA flash fwd+bwd" in out and "decode" in out
    md = paths["r.md"].read_text()
    assert doc["meta"]["command"] in md and f"torch {torch.__version__}" in md and doc["meta"]["date"] in md
    assert md.count("\n| 32 |") == 2 and md.count("\n| 128 |") == 1  # T rows (32 also a context), context rows
    assert paths["r.png"].read_bytes()[:4] == b"\x89PNG"


def _document():
    point = lambda op, mode, T, ms, **kw: {"op": op, "mode": mode, "seq_len": T, "batch": 32768 // T if mode != "decode" else 8,  # noqa: E731
                                         "ms": ms, "error": kw.get("error"), "state_mb": kw.get("state_mb"),
                                         "eager_ms": None, "note": kw.get("note")}
    settings = bench_kernels.Settings(seq_lens=[2048, 4096], decode_contexts=[2048, 8192])
    return {"meta": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "fla": "0.6.0",
                     "date": "2026-11-24", "command": settings.command(), "settings": vars(settings)},
            "points": [point("rla", "fwd", 2048, 1.234), point("rla", "fwd", 4096, 1.25),
                       point("fla_gdn", "fwd+bwd", 2048, 3.95, note="fla #640 guard lifted for timing"),
                       point("fla_gdn", "fwd+bwd", 4096, None, error="out of memory"),
                       point("rla", "decode", 2048, 0.0123, state_mb=16.0),
                       point("sdpa_flash", "decode", 2048, 0.02, state_mb=128.0),
                       point("sdpa_flash", "decode", 8192, 0.05, state_mb=512.0)]}


def test_rendering_from_saved_results(capsys, tmp_path):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(_document()))
    status, out, _ = run_main(capsys, "bench", "kernels", "--from-json", str(saved), "--markdown", "-",
                              "--plot", str(tmp_path / "p.png"))
    assert status == 0
    assert "1.23" in out and "3.95[1]" in out and "failed[2]" in out
    assert "[1] fla #640 guard lifted for timing" in out and "[2] out of memory" in out
    assert "| 2048 | 16 | 1.23 | 3.95[1] |" in out
    assert "| 8192 | 8 |  | 0.0500 (512.0 MB) |" in out  # a missing point is an empty cell
    assert "NVIDIA H100 80GB HBM3" in out and "triton 3.6.0" in out
    assert (tmp_path / "p.png").stat().st_size > 1000


def _merge(capsys, tmp_path, base, *later, out="merged.json"):
    (tmp_path / "base.json").write_text(json.dumps(base))
    args = ["bench", "kernels", "--from-json", str(tmp_path / "base.json"), "--json", str(tmp_path / out)]
    for i, doc in enumerate(later):
        (tmp_path / f"later{i}.json").write_text(json.dumps(doc))
        args += ["--merge", str(tmp_path / f"later{i}.json")]
    status, out_text, err = run_main(capsys, *args)
    merged = json.loads((tmp_path / out).read_text()) if status == 0 else None
    return status, out_text, err, merged


def _later_rla_run(ms, date="2026-12-01", **meta):
    later = _document()
    later["meta"].update(date=date, command=f"rla-convert bench kernels --ops rla --no-decode # {date}", **meta)
    later["meta"]["settings"].update(seq_lens=[2048, 16384], ops=["rla"], decode_contexts=[])
    later["points"] = [dict(later["points"][0], ms=ms), dict(later["points"][0], seq_len=16384, batch=2, ms=ms * 3)]
    return later


def _by_key(doc):
    return {(p["op"], p["mode"], p["seq_len"]): p["ms"] for p in doc["points"]}


def test_a_later_run_merges_into_saved_results(capsys, tmp_path):
    """--merge: the later run's points replace the saved ones at the same (op, mode, T), the rest stay, and the
    merged file's command says where each came from."""
    base = _document()
    ms = 0.5 + torch.rand(()).item()
    status, out, _, merged = _merge(capsys, tmp_path, base, _later_rla_run(ms))
    assert status == 0
    got = _by_key(merged)
    assert got[("rla", "fwd", 2048)] == ms and got[("rla", "fwd", 16384)] == ms * 3
    assert got[("rla", "fwd", 4096)] == 1.25 and got[("sdpa_flash", "decode", 8192)] == 0.05
    assert len(merged["points"]) == len(base["points"]) + 1
    assert merged["meta"]["settings"]["seq_lens"] == [2048, 4096, 16384]
    assert merged["meta"]["date"] == "2026-12-01"
    command = merged["meta"]["command"]
    assert command.startswith("merged: rla (fwd) from later0.json (2026-12-01, 'rla-convert bench kernels --ops rla")
    assert command.endswith(base["meta"]["command"])
    assert f"{ms:.2f}" in out


def test_merges_in_a_row_failed_points_and_versions(capsys, tmp_path):
    """Two --merge in order (the last one's point wins, the command names both, newest first); a point that failed in
    the later run keeps the earlier measurement and the command says so; each library version appears once."""
    first, second = 0.5 + torch.rand(()).item(), 2.5 + torch.rand(()).item()
    later = _later_rla_run(second, date="2026-12-02", triton="3.7.0")
    later["points"][1].update(ms=None, error="timeout")  # T=16384: nothing measured before either
    failed = dict(later["points"][0], seq_len=4096, batch=8, ms=None, error="out of memory")
    later["points"].append(failed)
    earlier = _later_rla_run(first)
    earlier["points"] = earlier["points"][:1]  # T=2048 only
    _, _, _, merged = _merge(capsys, tmp_path, _document(), earlier, later)
    got = _by_key(merged)
    assert got[("rla", "fwd", 2048)] == second  # the later of the two
    assert got[("rla", "fwd", 16384)] is None  # failed, and no measurement to keep
    assert got[("rla", "fwd", 4096)] == 1.25  # failed in the later run: the saved measurement stays
    command = merged["meta"]["command"]
    assert command.index("from later1.json (2026-12-02") < command.index("from later0.json (2026-12-01")
    assert "there failed, so kept from before: rla fwd T=4096" in command
    assert merged["meta"]["triton"] == "3.6.0, 3.7.0" and merged["meta"]["torch"] == "2.11.0"
    _, _, _, again = _merge(capsys, tmp_path, merged, later, out="again.json")
    assert again["meta"]["triton"] == "3.6.0, 3.7.0"


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["meta"]["settings"].update(dtype="fp16"), "dtype bf16 vs fp16"),
    (lambda d: d["meta"].update(device="NVIDIA H200"), "device 'NVIDIA H100 80GB HBM3' vs 'NVIDIA H200'"),
    (lambda d: d["meta"]["settings"].update(decode_batch=4), "decode_batch 8 vs 4"),
    (lambda d: d["meta"]["settings"].pop("tokens"), "not results of `rla-convert bench kernels --json` (no "
                                                    "meta.settings.tokens)"),
    (lambda d: d["points"][0].pop("ms"), "(no points[0].ms)"),
])
def test_runs_that_cannot_merge_are_refused_in_one_line(capsys, tmp_path, edit, message):
    later = _document()  # decode points on both sides: the decode batch must match too
    edit(later)
    status, _, err, _ = _merge(capsys, tmp_path, _document(), later)
    assert status == 2 and message in one_error_line(err) and "--merge" in one_error_line(err)


def test_merge_needs_saved_results_and_json(capsys, tmp_path):
    status, _, err = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--merge", __file__)
    assert status == 2 and "--from-json" in one_error_line(err)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text("rla 1.2 ms")
    (tmp_path / "base.json").write_text(json.dumps(_document()))
    for bad, message in (("list.json", "it needs a meta object and a points list"), ("text.json", "not JSON")):
        status, _, err = run_main(capsys, "bench", "kernels", "--from-json", str(tmp_path / "base.json"),
                                  "--merge", str(tmp_path / bad))
        assert status == 2 and f"--merge {tmp_path / bad}: " in one_error_line(err) and message in one_error_line(err)
    status, _, err = run_main(capsys, "bench", "kernels", "--from-json", str(tmp_path / "list.json"),
                              "--merge", str(tmp_path / "base.json"))
    assert status == 2 and f"--from-json {tmp_path / 'list.json'}: not results of" in one_error_line(err)


def test_an_op_keeps_its_colour_in_every_panel_whatever_the_point_order():
    """Merged result files list points in measurement order; the plot must not recolour ops by that order."""
    import matplotlib.pyplot as plt

    doc = _document()
    doc["points"] = [dict(p, ms=p["ms"] or 1.0) for p in doc["points"]]
    doc["points"].insert(0, dict(doc["points"][2], op="rdn", mode="fwd+bwd"))  # rdn drawn first in fwd+bwd only
    doc["points"].append(dict(doc["points"][1], op="rdn"))  # and last in fwd
    fig = plot.kernel_figure(doc)
    try:
        colours = {}
        for ax in fig.axes:
            for line in ax.get_lines():
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    finally:
        plt.close(fig)
    assert colours["RDN (ours)"] == {plot.COLORS["rdn"]} and colours["RLA (ours)"] == {plot.COLORS["rla"]}
    assert all(len(cs) == 1 for cs in colours.values())
    assert len({c for cs in colours.values() for c in cs}) == len(colours)  # and no two ops share one


def test_a_failing_point_is_recorded_and_the_run_goes_on(monkeypatch):
    real = bench_kernels.SEQUENCE_BUILDERS["sdpa_flash"]

    def flaky(shape, backward):
        if shape.seq_len == 32:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if backward:
            raise RuntimeError("no kernel for this shape\nlong detail")
        return real(shape, backward)

    monkeypatch.setitem(bench_kernels.SEQUENCE_BUILDERS, "sdpa_flash", flaky)
    settings = bench_kernels.Settings(seq_lens=[32, 64], tokens=128, heads=2, head_dim=16, dtype="fp32",
                                      ops=["sdpa_flash"], cpu_smoke=True)
    points = bench_kernels.run(settings, torch.device("cpu"), progress=False)
    assert [(p.seq_len, p.mode) for p in points] == [(32, "fwd"), (32, "fwd+bwd"), (64, "fwd"), (64, "fwd+bwd")]
    assert points[0].error == points[1].error == "out of memory"
    assert points[2].error is None and points[2].ms > 0
    assert points[3].error == "RuntimeError: no kernel for this shape"


def test_a_broken_cuda_context_ends_measuring_but_not_the_run(monkeypatch):
    """After a kernel fault every later point would fail: they are recorded as not measured, with where the
    context broke, and the run still returns every point (so the JSON and table get written)."""
    real = bench_kernels.SEQUENCE_BUILDERS["sdpa_flash"]
    calls = []

    def faulting(shape, backward):
        calls.append((shape.seq_len, backward))
        if shape.seq_len == 64 and not backward:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(shape, backward)

    monkeypatch.setitem(bench_kernels.SEQUENCE_BUILDERS, "sdpa_flash", faulting)
    monkeypatch.setattr(bench_kernels, "context_failure",
                        lambda device: "AcceleratorError: illegal memory access" if (64, False) in calls else None)
    settings = bench_kernels.Settings(seq_lens=[32, 64, 128], tokens=128, heads=2, head_dim=16, dtype="fp32",
                                      ops=["sdpa_flash"], modes=["fwd"], decode_contexts=[32], cpu_smoke=True)
    points = bench_kernels.run(settings, torch.device("cpu"), progress=False)
    assert [(p.seq_len, p.mode) for p in points] == [(32, "fwd"), (64, "fwd"), (128, "fwd"), (32, "decode")]
    assert points[0].error is None and points[0].ms > 0
    assert points[1].error.startswith("RuntimeError: CUDA error")
    for p in points[2:]:
        assert p.ms is None and p.error.startswith("not measured: the CUDA context broke at sdpa_flash fwd T=64")
    assert calls == [(32, False), (64, False)]  # nothing launched after the fault


def test_a_fault_caught_inside_a_successful_point_is_blamed_on_that_point(monkeypatch):
    """A decode point catches a failing CUDA-graph capture and keeps its eager time: if that broke the
    context, the point itself carries the error, not the next one."""
    failures = iter([None, "AcceleratorError: illegal memory access"])
    monkeypatch.setattr(bench_kernels, "context_failure", lambda device: next(failures, "still broken"))
    settings = bench_kernels.Settings(seq_lens=[32, 64, 128], tokens=128, heads=2, head_dim=16, dtype="fp32",
                                      ops=["sdpa_flash"], modes=["fwd"], cpu_smoke=True)
    points = bench_kernels.run(settings, torch.device("cpu"), progress=False)
    assert points[0].error is None
    assert points[1].error == "the CUDA context broke during this point: AcceleratorError: illegal memory access"
    assert points[2].error.startswith("not measured: the CUDA context broke at sdpa_flash fwd T=64")


def test_our_ops_are_called_as_the_api_contract_says(monkeypatch):
    """Forward, backward and decode (state in, state out) through a stand-in for rla_kernels.api built on
    the naive oracles, so the benchmark's calls are checked even before the real API lands."""
    calls = []

    def wrap(oracle):
        def op(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", initial_state=None,
               output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False, backend=None, validate=False):
            calls.append((q.shape[1], initial_state is not None, output_final_state, backend))
            return oracle(q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state)
        return op

    fake = types.ModuleType("rla_kernels.api")
    fake.rla, fake.rdn = wrap(naive_recurrent_rla), wrap(naive_recurrent_rdn)
    import rla_kernels

    monkeypatch.setitem(sys.modules, "rla_kernels.api", fake)
    monkeypatch.setattr(rla_kernels, "api", fake, raising=False)
    settings = bench_kernels.Settings(seq_lens=[8], tokens=16, heads=2, head_dim=8, dtype="fp32", ops=["rla", "rdn"],
                                      decode_contexts=[12], decode_batch=2, cpu_smoke=True)
    points = bench_kernels.run(settings, torch.device("cpu"), progress=False)
    assert [(p.op, p.mode) for p in points] == [("rla", "fwd"), ("rla", "fwd+bwd"), ("rdn", "fwd"), ("rdn", "fwd+bwd"),
                                                ("rla", "decode"), ("rdn", "decode")]
    assert all(p.error is None and p.ms > 0 and p.note is None for p in points), points
    assert points[-1].state_mb * 2**20 == 2 * 2 * 2 * 8 * 8 * 4  # (S, R) x batch x heads x K x V x fp32
    assert all(backend == "torch" for *_, backend in calls)
    assert (12, False, True, "torch") in calls and (1, True, True, "torch") in calls  # prefill, then decode


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_keep_op_times_the_op_with_its_walk_kept(variant, monkeypatch):
    """rla_keep / rdn_keep is the public rla / rdn with recompute_states=False, in both modes, with a colour and label
    of its own."""
    calls = []
    naive = {"rla": naive_recurrent_rla, "rdn": naive_recurrent_rdn}[variant]

    def op(q, k, v, g, beta, gamma, **kw):
        calls.append(kw)
        return naive(q, k, v, g, beta, gamma, None, 1.0, "clip", None, False)

    fake = types.ModuleType("rla_kernels.api")
    setattr(fake, variant, op)
    import rla_kernels

    monkeypatch.setitem(sys.modules, "rla_kernels.api", fake)
    monkeypatch.setattr(rla_kernels, "api", fake, raising=False)
    name = f"{variant}_keep"
    settings = bench_kernels.Settings(seq_lens=[8], tokens=16, heads=2, head_dim=8, dtype="fp32", ops=[name],
                                      decode_contexts=[12], cpu_smoke=True)
    points = bench_kernels.run(settings, torch.device("cpu"), progress=False)
    assert [(p.op, p.mode) for p in points] == [(name, "fwd"), (name, "fwd+bwd")]  # no decode point
    assert all(p.error is None and p.ms > 0 for p in points), points
    assert calls and all(kw == {"backend": "torch", "recompute_states": False} for kw in calls)
    assert plot.COLORS[name] not in {c for op, c in plot.COLORS.items() if op != name}
    assert plot.LABELS[name] not in {label for op, label in plot.LABELS.items() if op != name}


def test_bad_options_and_models_fail_cleanly(capsys):
    status, _, err = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--ops", "rla,flash3")
    assert status == 2 and "flash3" in one_error_line(err) and "sdpa_flash" in one_error_line(err)
    status, _, err = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--seq-lens", "2k")
    assert status == 2 and "--seq-lens" in one_error_line(err)
    status, _, err = run_main(capsys, "bench", "model", "nope1", "nope2", "--cpu-smoke")
    assert status == 2 and "no model 'nope1'" in one_error_line(err)
    # a zero is the user's value, refused, not replaced by the default
    status, _, err = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--heads", "0")
    assert status == 2 and "--heads must be a positive integer; got 0" in one_error_line(err)
    status, _, err = run_main(capsys, "bench", "model", "nope1", "nope2", "--cpu-smoke", "--steps", "0")
    assert status == 2 and "--steps must be a positive integer" in one_error_line(err)
    status, _, err = run_main(capsys, "bench", "kernels", "--cpu-smoke", "--tokens", "7", "--seq-lens", "32")
    assert status == 2 and "--tokens 7 is fewer than T=32" in one_error_line(err)


@pytest.mark.slow  # importing fla takes about 10 s here
def test_fla_hopper_guard_is_lifted_only_inside_the_benchmark(monkeypatch):
    chunk_o = pytest.importorskip("fla.ops.common.chunk_o")
    # Pretend to be Hopper with Triton 3.6, where fla 0.6.0 refuses the gated backward (its issue #640).
    monkeypatch.setattr(chunk_o, "IS_NVIDIA_HOPPER", True)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_4_0", True)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_7_1", False)
    x = torch.randn(1, 64, 1, 16)
    h = torch.randn(1, 1, 1, 16, 16)
    args = dict(q=x, k=x, v=x, do=x, h=h, dh=h, g=torch.zeros(1, 64, 1))
    with pytest.raises(RuntimeError, match="#640"):
        chunk_o.chunk_bwd_dqkwg(**args)
    with bench_kernels.fla_hopper_guard_lifted():
        with pytest.raises(Exception) as past_the_guard:  # no GPU here: it fails later, in the kernel launch
            chunk_o.chunk_bwd_dqkwg(**args)
        assert "#640" not in str(past_the_guard.value)
    assert chunk_o.TRITON_ABOVE_3_7_1 is False  # restored

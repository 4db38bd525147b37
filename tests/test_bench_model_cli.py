"""`rla-convert bench model TEACHER CONVERTED` on the CPU: a tiny random Llama against its converted export."""
import json
import shutil

import pytest
import torch
import transformers as tf

from clitools import exit_status, one_error_line, run_main

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
KV_HEADS, HEAD_DIM, LAYERS = 2, 16, 2


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(teacher dir, converted dir): a random Llama and its RDN export, made by the CLI itself."""
    root = tmp_path_factory.mktemp("bench_model")
    tf.LlamaForCausalLM(tf.LlamaConfig(**TINY)).save_pretrained(root / "teacher")
    assert exit_status(str(root / "teacher"), "--variant", "rdn", "--out", str(root / "converted")) in (0, None)
    return root / "teacher", root / "converted"


def by(points, model, measure):
    return {p["context"] if measure != "throughput" else p["batch"]: p
            for p in points if p["model"] == model and p["measure"] == measure}


def test_cpu_smoke_measures_both_models_and_writes_every_output(pair, tmp_path, capsys):
    teacher, converted = pair
    out = {name: tmp_path / name for name in ("r.json", "r.md", "r.png")}
    status, stdout, _ = run_main(capsys, "bench", "model", str(teacher), str(converted), "--cpu-smoke", "--no-progress",
                                 "--contexts", "32,300", "--decode-contexts", "16,32,64", "--json", str(out["r.json"]),
                                 "--markdown", str(out["r.md"]), "--plot", str(out["r.png"]))
    assert status == 0
    doc = json.loads(out["r.json"].read_text())
    points = doc["points"]
    assert [p for p in points if p["error"]] == []
    # Per model: 2 prefill, 3 decode, 2 throughput (smoke batches 1,2); no compiled decode in smoke mode.
    for model in ("teacher", "converted"):
        assert sorted(by(points, model, "prefill")) == [32, 300]
        assert sorted(by(points, model, "decode")) == [16, 32, 64]
        assert sorted(by(points, model, "throughput")) == [1, 2]
        assert all(p["ms"] > 0 and p["tokens_per_s"] > 0 for p in points if p["model"] == model)
    # The teacher's KV cache grows with the context, exactly layers x (k, v) x kv heads x context x head dim x fp32;
    # the converted model's state is the same size after 16 tokens as after 64.
    for context, p in by(points, "teacher", "decode").items():
        assert p["cache_mb"] * 2**20 == LAYERS * 2 * KV_HEADS * context * HEAD_DIM * 4
    state = {p["cache_mb"] for p in by(points, "converted", "decode").values()}
    assert len(state) == 1 and state.pop() > 0
    # 300 > max_position_embeddings (256): measured, with a note that the numbers are speed and memory only
    assert all("256 positions" in by(points, m, "prefill")[300]["note"] for m in ("teacher", "converted"))
    assert doc["meta"]["models"]["converted"]["variant"] == "rdn" and doc["meta"]["device"] == "cpu"

    # --no-progress: one line per point, printed as it was measured
    assert sum(line.startswith(("teacher ", "converted ")) for line in stdout.splitlines()) == len(points) == 14
    assert "prefill, batch 1" in stdout and "converted speed-up" in stdout
    md = out["r.md"].read_text()
    meta = doc["meta"]
    assert meta["command"] in md and "--cpu-smoke" in meta["command"] and meta["date"] in md and "cpu" in md
    assert md.count("\n| 300 |") == 1 and md.count("\n| 64 |") == 1 and "256 positions" in md
    assert out["r.png"].read_bytes()[:4] == b"\x89PNG"


def test_gpu_numbers_without_cuda_are_one_line_exit_2(pair, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, _, err = run_main(capsys, "bench", "model", *map(str, pair))
    assert status == 2
    line = one_error_line(err)
    assert "CUDA" in line and "--cpu-smoke" in line


@pytest.mark.parametrize("edit, expected", [
    ({"variant": "gla"}, "variant must be 'rla', 'rdn' or 'gdn'"),
    ({"num_heads": 3}, "must divide"),
    ({"no_such_argument": 1}, "no_such_argument"),
])
def test_converted_config_the_layers_cannot_take(pair, tmp_path, capsys, edit, expected):
    broken = tmp_path / "broken"
    shutil.copytree(pair[1], broken)
    config = json.loads((broken / "config.json").read_text())
    config["conversion"]["layers"][0]["kwargs"].update(edit)
    (broken / "config.json").write_text(json.dumps(config))
    status, stdout, err = run_main(capsys, "bench", "model", str(pair[0]), str(broken), "--cpu-smoke")
    assert status == 2
    line = one_error_line(err)
    assert "could not load" in line and str(broken) in line and expected in line
    assert "teacher" not in stdout  # nothing was measured


def test_out_of_memory_point_is_skipped_and_the_run_goes_on(pair, tmp_path, capsys, monkeypatch):
    real, prefills = tf.LlamaModel.forward, []

    def forward(self, input_ids=None, **kwargs):
        prefills.append(input_ids.shape[1])
        if input_ids.shape[1] >= 64:  # any prefill of 64 tokens or more: more than this "device" holds
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(tf.LlamaModel, "forward", forward)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)  # the skip rule, not the compiler
    status, stdout, _ = run_main(capsys, "bench", "model", *map(str, pair), "--cpu-smoke", "--no-progress",
                                 "--contexts", "32,64,128", "--decode-contexts", "32,64", "--batches", "1",
                                 "--compile-decode", "--json", str(tmp_path / "r.json"))
    assert status == 0
    points = json.loads((tmp_path / "r.json").read_text())["points"]
    for model in ("teacher", "converted"):
        prefill, decode = by(points, model, "prefill"), by(points, model, "decode")
        assert prefill[32]["error"] is None and prefill[32]["ms"] > 0
        assert prefill[64]["error"] == decode[64]["error"] == "out of memory"
        assert prefill[128]["error"] == "skipped: prefill ran out of memory at context 64, batch 1"
        assert decode[32]["error"] is None and by(points, model, "throughput")[1]["error"] is None
        compiled = by(points, model, "decode_compiled")
        assert compiled[32]["error"] is None
        assert compiled[64]["error"] == "skipped: decode ran out of memory at context 64, batch 1"
    assert 128 not in prefills  # a longer context than one that failed is not even tried
    assert "skipped[" in stdout and "out of memory" in stdout


def test_context_past_a_learned_position_table_is_skipped(pair, tmp_path, capsys):
    """GPT-2 has learned positions: a longer context cannot run at all (on CUDA it would be a device assert)."""
    gpt2 = tmp_path / "gpt2"
    config = tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    tf.GPT2LMHeadModel(config).save_pretrained(gpt2)
    status, _, _ = run_main(capsys, "bench", "model", str(gpt2), str(pair[1]), "--cpu-smoke", "--no-progress",
                            "--contexts", "16,128", "--decode-contexts", "16", "--batches", "1", "--throughput-context",
                            "16", "--json", str(tmp_path / "r.json"))
    assert status == 0
    points = json.loads((tmp_path / "r.json").read_text())["points"]
    teacher = by(points, "teacher", "prefill")
    assert teacher[16]["error"] is None
    assert teacher[128]["error"].startswith("skipped: context 128") and "64 learned positions" in teacher[128]["error"]
    assert by(points, "converted", "prefill")[128]["error"] is None  # RoPE: no table to run past


def test_compiled_decode_is_measured_beside_eager(pair, tmp_path, capsys, monkeypatch):
    real = torch.compile
    # Dynamo traces the models for real; its 'eager' backend skips inductor's C++ build (minutes on this CPU).
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": "eager"}))
    try:
        status, stdout, _ = run_main(capsys, "bench", "model", *map(str, pair), "--cpu-smoke", "--compile-decode",
                                     "--contexts", "16", "--decode-contexts", "16,32", "--batches", "1",
                                     "--json", str(tmp_path / "r.json"))
    finally:
        torch._dynamo.reset()
    assert status == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert "--compile-decode --compile-mode default" in doc["meta"]["command"]
    for model in ("teacher", "converted"):
        eager, compiled = by(doc["points"], model, "decode"), by(doc["points"], model, "decode_compiled")
        assert sorted(compiled) == [16, 32]
        for context, p in compiled.items():
            assert p["error"] is None and p["ms"] > 0 and p["batch"] == 1
            assert p["cache_mb"] == eager[context]["cache_mb"]
    assert "teacher compiled" in stdout


def test_a_compile_failure_is_a_failed_point_not_a_crash(pair, tmp_path, capsys, monkeypatch):
    def broken_compile(model, **kwargs):
        def step(**inputs):
            raise RuntimeError("backend compiler failed (simulated)\ntraceback lines")
        return step

    monkeypatch.setattr(torch, "compile", broken_compile)
    status, stdout, _ = run_main(capsys, "bench", "model", *map(str, pair), "--cpu-smoke", "--compile-decode",
                                 "--contexts", "16", "--decode-contexts", "16", "--batches", "1",
                                 "--json", str(tmp_path / "r.json"))
    assert status == 0
    points = json.loads((tmp_path / "r.json").read_text())["points"]
    failed = [p for p in points if p["error"]]
    assert [(p["model"], p["measure"]) for p in failed] == [
        (m, f"{kind}_compiled") for m in ("teacher", "converted") for kind in ("decode", "throughput")]
    assert all(p["error"] == "RuntimeError: backend compiler failed (simulated)" for p in failed)
    assert len(points) == 10 and "failed[1]" in stdout


def test_cuda_graph_mode_without_a_gpu_fails_those_points_and_says_why(pair, tmp_path, capsys):
    status, stdout, _ = run_main(capsys, "bench", "model", *map(str, pair), "--cpu-smoke", "--compile-decode",
                                 "--compile-mode", "cuda-graph", "--contexts", "16", "--decode-contexts", "16",
                                 "--batches", "1,2", "--json", str(tmp_path / "r.json"))
    assert status == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert "--compile-mode cuda-graph" in doc["meta"]["command"]
    failed = [(p["model"], p["measure"], p["batch"]) for p in doc["points"] if p["error"]]
    assert failed == [(m, measure, b) for m in ("teacher", "converted")
                      for measure, b in (("decode_compiled", 1), ("throughput_compiled", 1), ("throughput_compiled", 2))]
    assert all(p["error"] == "RuntimeError: CUDA graphs need a CUDA device" for p in doc["points"] if p["error"])
    assert "replay of a captured CUDA graph" in stdout

"""`rla-convert MODEL --variant ... --out DIR`: exports on success; bad input is one line, exit 2, nothing written."""
import json

import pytest
import torch
import transformers as tf

from clitools import exit_status, one_error_line, run_process

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).save_pretrained(path)
    return path


def test_converts_and_exports_a_checkpoint_dir(llama_dir, tmp_path, capsys):
    assert exit_status(str(llama_dir), "--variant", "rla", "--keep-softmax", "1,", "--out", str(tmp_path / "out")) in (0, None)
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn" in out and "kept" in out and "parameters:" in out and "drift" in out
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model.model.layers[0].self_attn).__name__ == "ResidualAttention"
    assert model.generate(torch.randint(0, 128, (1, 4)), max_new_tokens=3, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("stored, asked, written", [
    (torch.bfloat16, "auto", torch.bfloat16),  # a bf16 checkpoint exports bf16, not float32 at twice its size
    (torch.float32, "auto", torch.float32),
    (torch.bfloat16, "float32", torch.float32),
    (torch.float32, "float16", torch.float16),
])
def test_export_keeps_the_checkpoints_dtype_unless_told(tmp_path, capsys, stored, asked, written):
    from safetensors import safe_open

    source = tmp_path / "source"
    tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).to(stored).save_pretrained(source)
    assert exit_status(str(source), "--variant", "rdn", "--dtype", asked, "--out", str(tmp_path / "out")) in (0, None)
    name = str(written).removeprefix("torch.")
    assert f"({name} weights)" in capsys.readouterr().out
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        dtypes = {f.get_tensor(key).dtype for key in f.keys()}
    assert dtypes == {written}  # the converted layers' new gate parameters too
    assert tf.AutoConfig.from_pretrained(tmp_path / "out").dtype in (name, written)
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # (transformers' default: the stored dtype)
    assert model.dtype == written
    ids = torch.randint(0, 128, (1, 4))
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("dtype, kept", [(torch.bfloat16, {"router"}), (torch.float16, {"router", "norm"})])
def test_cast_for_export_leaves_what_from_pretrained_keeps_in_float32(dtype, kept):
    # transformers' rules: _keep_in_fp32_modules_strict at bf16 and fp16, _keep_in_fp32_modules at fp16 only; each
    # pattern searched in the full name (MoE routers' "gate.weight" is no single dotted part)
    from rla_convert.models.export import cast_for_export

    class Model(torch.nn.Module):
        _keep_in_fp32_modules = ["norm"]
        _keep_in_fp32_modules_strict = ["gate.weight"]

        def __init__(self):
            super().__init__()
            self.config = tf.PretrainedConfig(text_config=tf.PretrainedConfig(), base_config={"dtype": "float32"})
            self.proj, self.norm, self.gate = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)
            self.register_buffer("steps", torch.arange(3))  # not floating: left alone

    model = Model()
    cast_for_export(model, dtype)
    assert model.proj.weight.dtype == model.proj.bias.dtype == model.gate.bias.dtype == dtype
    assert (model.gate.weight.dtype == torch.float32) == ("router" in kept)
    assert (model.norm.weight.dtype == torch.float32) == ("norm" in kept) and model.steps.dtype == torch.int64
    # every config level names the dtype (transformers' save sets only the top level's)
    assert model.config.dtype == model.config.text_config.dtype == dtype
    assert model.config.base_config == {"dtype": str(dtype).removeprefix("torch.")}


def test_auto_reads_the_safetensors_where_the_config_names_no_dtype(tmp_path):
    from rla_convert.checkpoints import export_dtype, stored_dtype

    source = tmp_path / "source"
    tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).to(torch.bfloat16).save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (source / "config.json").write_text(json.dumps(config))
    assert stored_dtype(str(source)) == torch.bfloat16  # as transformers' dtype="auto" reads it
    assert export_dtype("bf16", str(source)) == torch.bfloat16 and export_dtype("fp32", str(source)) == torch.float32
    (source / "config.json").write_text("[]")  # valid JSON, no object: the weights still say
    assert stored_dtype(str(source)) == torch.bfloat16


def test_backend_triton_is_recorded_when_converting_on_a_machine_without_cuda(llama_dir, tmp_path, capsys, monkeypatch):
    # a checkpoint meant for a GPU, converted on a CPU: the drift runs on this machine's backend, the config keeps
    # triton
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the suite's interpreter would otherwise run triton on the CPU
    out = str(tmp_path / "out")
    assert exit_status(str(llama_dir), "--variant", "rdn", "--backend", "triton", "--out", out) in (0, None)
    assert "layers keep backend='triton'" in capsys.readouterr().out
    assert tf.AutoConfig.from_pretrained(tmp_path / "out").conversion["backend"] == "triton"


@pytest.mark.parametrize("args, expected", [
    (["--variant", "gla"], "rla, rdn"),
    (["--keep-softmax", "7,"], "out of range"),
    (["--keep-softmax", "1;2"], "one layer: 15,"),
    (["--keep-softmax", "2"], "keeps all 2 layers"),
    (["--clip", "abc"], "--clip"),
    (["--gate-init", "zeros"], "small-residual"),
    (["--dtype", "float64"], "--dtype 'float64': accepted: auto, float32, bfloat16, float16 (or bf16, fp16, fp32)"),
])
def test_bad_options_are_one_line_exit_2_nothing_written(llama_dir, tmp_path, capsys, args, expected):
    assert exit_status(str(llama_dir), *args, "--out", str(tmp_path / "out")) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_dir_needs_force(llama_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert exit_status(str(llama_dir), "--out", str(tmp_path / "out")) == 2
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert list((tmp_path / "out").iterdir()) == []


def test_checkpoint_that_fails_to_load(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert exit_status(str(tmp_path / "broken"), "--out", str(tmp_path / "out")) == 2
    assert "could not load" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_architecture_without_attention_lists_supported(tmp_path, capsys):
    # RWKV, not Mamba: fla registers its own "mamba" model type, whose Triton fallback needs a GPU driver
    path = tmp_path / "rwkv"
    config = tf.RwkvConfig(vocab_size=64, hidden_size=32, attention_hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    tf.RwkvForCausalLM(config).save_pretrained(path)
    assert exit_status(str(path), "--out", str(tmp_path / "out")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no attention" in line and "Llama" in line and "GPT-2" in line
    assert not (tmp_path / "out").exists()


def test_export_of_a_dir_that_is_no_run_is_one_line(llama_dir, tmp_path, capsys):
    assert exit_status("export", str(llama_dir), "--out", str(tmp_path / "out")) == 2
    assert "not a finished distillation run" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smollm2_rdn_end_to_end(tmp_path):
    """The bundled SmolLM2-135M: convert + export in a subprocess, then load both ways and generate."""
    out = tmp_path / "smollm2-rdn"
    run = run_process("smollm2-135m", "--variant", "rdn", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "model.layers.29.self_attn" in run.stdout and "drift" in run.stdout
    assert "converting to rdn" in run.stderr  # the progress bar
    model = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    cached = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    steps = ids
    with torch.no_grad():
        for _ in range(6):
            steps = torch.cat([steps, model(steps, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, steps)
    assert isinstance(tokenizer.decode(cached[0]), str)

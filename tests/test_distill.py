"""`rla-convert distill` and `export` of a run: on a tiny random Llama with a tokenizer trained in the test,
and (slow) the CPU smoke recipe on the bundled SmolLM2-135M."""
import json
from pathlib import Path

import pytest
import torch

from clitools import exit_status, one_error_line
from rla_convert.distill.recipe import load_recipe
from rla_convert.distill.trainer import DistillError, DistillRun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, word_tokenizer, word_corpus):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("distill")
    cfg = LlamaConfig(vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    word_tokenizer.save_pretrained(root / "model")
    (root / "data").symlink_to(word_corpus, target_is_directory=True)
    return root


def write_recipe(tmp_path, tiny, name="recipe.yaml", **overrides):
    fields = {
        "model": str(tiny / "model"), "data.train": str(tiny / "data"), "data.seq_len": 32,
        "data.heldout_fraction": 0.1, "data.cache_dir": str(tmp_path / "cache"),
        "stage1.steps": 6, "stage1.lr": 0.02, "stage1.batch_size": 2, "stage1.warmup_steps": 1,
        "stage2.steps": 6, "stage2.lr": 0.003, "stage2.batch_size": 2, "stage2.warmup_steps": 1,
        "stage2.lora.r": 2, "stage2.lora.alpha": 4, "eval.every": 0, "eval.tokens": 256,
        "precision": "fp32", "device": "cpu", "output": str(tmp_path / "run"), "log_every": 1, "checkpoint_every": 2,
    }
    fields.update(overrides)
    tree: dict = {}  # nested YAML from the dotted keys
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = tree
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(rows):
    return {(r["stage"], r["step"]): r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run = DistillRun(load_recipe(write_recipe(tmp, tiny, **{"eval.passkey": [64], "eval.passkey_n": 2})), progress=False)
    summary = run.run()
    return run, summary, tmp / "run"


def test_the_teacher_is_loaded_again_in_the_training_precision(tiny, tmp_path, monkeypatch):
    """The student is the fp32 load converted in place, the teacher a second load in the training precision: no
    tensor of one is the other's (the host never holds a copy of the fp32 load), the teacher has every weight of the
    checkpoint, and a load at bf16 is the fp32 load cast (the teacher runs had when it was a cast copy), but for
    buffers outside the state dict: the rotary inv_freq stays fp32 as from_pretrained keeps it, where the cast rounded
    it to bf16 (bf16 runs' teacher perplexity moves a little: docs/runs' predate 2026-12-05)."""
    from transformers import LlamaForCausalLM

    from rla_convert import checkpoints

    real, dtypes = checkpoints.load_checkpoint, []

    def recording(*args, **kwargs):
        dtypes.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_checkpoint", recording)
    run = DistillRun(load_recipe(write_recipe(tmp_path, tiny)), progress=False)
    run.setup()
    assert dtypes == [torch.float32, torch.float32]  # precision fp32 here: a CPU run
    student = {p.data_ptr() for p in run.student.parameters()}
    assert not any(p.data_ptr() in student for p in run.teacher.parameters())
    saved = LlamaForCausalLM.from_pretrained(tiny / "model").state_dict()
    teacher = run.teacher.state_dict()
    assert teacher.keys() == saved.keys() and all(torch.equal(teacher[k], saved[k]) for k in saved)
    fp32, _ = real(str(tiny / "model"), dtype=torch.float32, with_tokenizer=False)
    bf16, _ = real(str(tiny / "model"), dtype=torch.bfloat16, with_tokenizer=False)
    cast = {k: t.to(torch.bfloat16) for k, t in fp32.state_dict().items()}
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, cast[k]) for k, t in bf16.state_dict().items())


def test_default_lora_targets_adapt_an_mla_layers_projections():
    # an MLA-converted layer keeps MLA's projections under their names: the default targets must reach them, not
    # only o_proj (q_b_proj, kv_a_proj_with_mqa and kv_b_proj carry the layer's q, k and v)
    from types import SimpleNamespace

    from test_architectures import CASES

    from rla_convert.config import ConversionConfig
    from rla_convert.convert import convert_model
    from rla_convert.distill.recipe import LoraSpec
    from rla_convert.distill.trainer import with_lora

    student = convert_model(CASES["deepseek-v3"][0](), ConversionConfig(variant="rdn"), progress=False).model
    wrapped = with_lora(student, SimpleNamespace(stage2=SimpleNamespace(lora=LoraSpec())))
    adapted = {name.rsplit(".", 1)[0] for name, _ in wrapped.named_modules() if name.endswith(".lora_A")}
    expected = {f"base_model.model.model.layers.{i}.self_attn.{p}" for i in (0, 1)
                for p in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")}
    assert adapted == expected


def test_runs_from_before_mla_joined_the_default_lora_targets_still_resume(tiny, tmp_path):
    # a recipe that lists no targets hashed the old default, q/k/v/o: it must hash so still (MLA's names, in the
    # default since, adapted nothing in the models runs could convert then); any other choice of targets differs
    from rla_convert.distill.trainer import recipe_fingerprint

    def fingerprint(**overrides):
        return recipe_fingerprint(load_recipe(write_recipe(tmp_path, tiny, **overrides)))

    default = fingerprint()
    assert default == fingerprint(**{"stage2.lora.targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    assert default != fingerprint(**{"stage2.lora.targets": ["q_proj", "v_proj"]})
    assert default != fingerprint(**{"stage2.lora.targets": ["q_proj", "k_proj", "v_proj", "o_proj", "kv_b_proj"]})


def test_a_run_writes_metrics_artifact_and_summary(finished_run):
    run, summary, run_dir = finished_run
    rows = metrics(run_dir)
    assert [r["step"] for r in rows if r["stage"] == "stage1" and "loss" in r] == list(range(1, 7))
    assert {"kl", "ce", "tokens_per_s"} <= set(next(r for r in rows if r["stage"] == "stage2" and "loss" in r))
    assert (run_dir / "final" / "trainable.safetensors").stat().st_size < 200_000  # trained parameters only
    assert (run_dir / "losses.png").stat().st_size > 0
    assert [p["length"] for p in summary["passkey"]["teacher"]] == [64] and len(summary["passkey"]["student"]) == 1
    spans = summary["wall_seconds"]
    assert spans["stage1"] >= 0 and spans["stage2"] >= 0  # rounded to 0.1 s: a tiny stage can take "0.0"
    assert spans["to_end_of_training"] == pytest.approx(spans["stage1"] + spans["stage2"], abs=0.11)
    for key in ("ppl_ratio_before", "ppl_ratio_stage1", "ppl_ratio_stage2"):
        assert summary[key] > 0 and summary[key] == summary[key]
    first, last = losses(rows)[("stage1", 1)], losses(rows)[("stage1", 6)]
    assert last < first, (first, last)


def test_loading_a_run_passes_on_no_peft_deprecation_warning(finished_run):
    import warnings

    from rla_convert.distill.artifact import load_distilled

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is_gradient_checkpointing.*")
        assert load_distilled(finished_run[2]).model is not None


def test_the_recipe_expectations_are_checked_not_echoed():
    from rla_convert.distill.trainer import check_expectations

    rows = [{"stage": "stage1", "step": i, "loss": x} for i, x in enumerate((3.0, 2.5, 2.7), 1)]
    rows += [{"stage": "stage2", "step": i, "loss": x} for i, x in enumerate((1.0, 1.2), 1)]
    got = check_expectations({"heldout_ppl_ratio": 1.2, "stage1_loss_drops": True, "stage2_loss_drops": True,
                              "minutes_on_h100": 8}, {"ppl_ratio_stage2": 1.25}, rows)
    assert got["heldout_ppl_ratio"] == {"expected": "<= 1.2", "reached": 1.25, "met": False}
    assert got["stage1_loss_drops"]["met"] and not got["stage2_loss_drops"]["met"]
    assert got["minutes_on_h100"] == "not checked"
    assert check_expectations({"heldout_ppl_ratio": 1.3}, {"ppl_ratio_stage2": 1.25}, rows)["heldout_ppl_ratio"]["met"]
    odd = check_expectations({"heldout_ppl_ratio": "1.2", "stage1_loss_drops": "yes"}, {"ppl_ratio_stage2": 1.0}, rows)
    assert odd == {"heldout_ppl_ratio": "not checked", "stage1_loss_drops": "not checked"}  # never a traceback
    one = check_expectations({"stage2_loss_drops": True}, {}, rows[:4])
    assert one["stage2_loss_drops"].startswith("not checked")


def test_resumed_run_follows_the_uninterrupted_trajectory(finished_run, tiny, tmp_path):
    _, _, reference_dir = finished_run
    recipe = write_recipe(tmp_path, tiny)
    assert DistillRun(load_recipe(recipe), progress=False, stop_after=4).run() == {"stopped": True}  # inside stage 1
    assert DistillRun(load_recipe(recipe), resume=True, progress=False, stop_after=5).run() == {"stopped": True}  # stage 2
    DistillRun(load_recipe(recipe), resume=True, progress=False).run()
    expected, got = losses(metrics(reference_dir)), losses(metrics(tmp_path / "run"))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    from safetensors.torch import load_file

    a = load_file(reference_dir / "final" / "trainable.safetensors")
    b = load_file(tmp_path / "run" / "final" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_stage1_lora_trains_adapters_that_stage2_continues(tiny, tmp_path):
    from safetensors.torch import load_file

    def recipe(name):
        return load_recipe(write_recipe(tmp_path, tiny, name=f"{name}.yaml", output=str(tmp_path / name),
                                        **{"stage1.lora": True, "stage1.lora_lr": 0.01}))

    DistillRun(recipe("whole"), progress=False).run()
    stage1 = load_file(tmp_path / "whole" / "checkpoints" / "stage1-final.safetensors")
    lora_b = [t for n, t in stage1.items() if "lora_B" in n]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # peft starts B at 0: stage 1 moved every adapter
    # stopped in stage 2, the resumed run must rebuild the adapters before loading stage 1's result
    assert DistillRun(recipe("split"), progress=False, stop_after=8).run() == {"stopped": True}
    DistillRun(recipe("split"), resume=True, progress=False).run()
    expected, got = losses(metrics(tmp_path / "whole")), losses(metrics(tmp_path / "split"))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key


def test_lora_on_a_new_gate_keeps_the_gate_trained_in_both_stages(tiny, tmp_path):
    from safetensors.torch import load_file

    recipe = load_recipe(write_recipe(tmp_path, tiny, **{"stage1.lora": True, "stage2.lora.targets": ["q_proj", "b_proj"]}))
    DistillRun(recipe, progress=False).run()
    final = load_file(tmp_path / "run" / "final" / "trainable.safetensors")
    gate = [n for n in final if n.endswith("b_proj.base_layer.weight")]
    assert gate and any("b_proj.lora_A" in n for n in final)  # the gate itself and its adapter both kept


def test_export_writes_the_dtype_asked_for(finished_run, tmp_path, capsys):
    """--dtype bfloat16: the merged weights at half the bytes, the model's outputs within bf16 rounding of the run's
    (auto keeps the base checkpoint's float32 here: the test above); a bad value is one line before any loading."""
    import transformers as tf

    run, _, run_dir = finished_run
    assert exit_status("export", str(run_dir), "--out", str(tmp_path / "bad"), "--dtype", "fp8") == 2
    assert "--dtype 'fp8': accepted: auto, float32, bfloat16, float16 (or bf16, fp16, fp32)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert exit_status("export", str(run_dir), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16") in (0, None)
    assert "(bfloat16 weights)" in capsys.readouterr().out
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    assert loaded.dtype == torch.bfloat16
    ids = torch.randint(3, loaded.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = run.peft_model.eval()(input_ids=ids).logits
        got = loaded(input_ids=ids).logits.float()
    assert ((got - want).norm() / want.norm()).item() < 3e-2


def test_export_merges_the_run_into_a_loadable_checkpoint(finished_run, tmp_path, capsys):
    import transformers as tf

    run, summary, run_dir = finished_run
    assert exit_status("export", str(run_dir), "--out", str(tmp_path / "exported")) in (0, None)
    assert "wrote" in capsys.readouterr().out
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    ids = torch.randint(3, loaded.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = run.peft_model.eval()(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_eval_reads_a_run_dir_as_its_merged_model(finished_run, tmp_path, word_corpus):
    run, summary, run_dir = finished_run
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join((word_corpus / f"doc{i:02d}.txt").read_text() for i in range(4)))
    assert exit_status("eval", str(run_dir), "--text", str(text), "--window", "32", "--json", str(tmp_path / "r.json")) in (0, None)
    ppl = json.loads((tmp_path / "r.json").read_text())["perplexity"]["perplexity"]
    assert 1 < ppl < float("inf")


def test_non_finite_losses_are_skipped_then_stop_the_run(tiny, tmp_path, monkeypatch):
    from rla_convert.distill import trainer

    calls = {"n": 0}
    real = trainer.relative_mse

    def flaky(pred, target):  # step 3's batch (both layers) gives NaN once
        calls["n"] += 1
        out = real(pred, target)
        return out * float("nan") if calls["n"] in (5, 6) else out

    monkeypatch.setattr(trainer, "relative_mse", flaky)
    DistillRun(load_recipe(write_recipe(tmp_path, tiny, **{"stage2.steps": 1})), progress=False).run()
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows if r.get("skipped")] == [2]
    assert (tmp_path / "run" / "final").is_dir()

    monkeypatch.setattr(trainer, "relative_mse", lambda p, t: real(p, t) * float("nan"))
    out = tmp_path / "nan-run"
    with pytest.raises(DistillError, match="consecutive steps with a non-finite loss"):
        DistillRun(load_recipe(write_recipe(tmp_path, tiny, "nan.yaml", output=str(out), **{"stage1.steps": 8})),
                   progress=False).run()
    assert not (out / "final").exists()


@pytest.mark.parametrize("overrides, expected", [
    ({"data.train": "missing.jsonl"}, "does not exist"),
    ({"data.seq_len": 512}, "over the model's maximum of 128"),
    ({"stage1.steps": "ten"}, "stage1.steps' must be an integer"),
    ({"precision": "bf16"}, "needs a CUDA device"),
    ({"device": "meta"}, "device: 'meta': only CPU and CUDA devices are supported"),
    ({"device": "tpu"}, "device: 'tpu' is not a device; accepted: auto, cpu"),
    ({"device": "cpuu"}, "device: 'cpuu' is not a device; accepted: auto, cpu"),
    ({"conversion.keep_softmax": [9]}, "out of range"),
])
def test_bad_recipes_are_one_line_exit_2(tiny, tmp_path, capsys, overrides, expected):
    recipe = write_recipe(tmp_path, tiny, **overrides)
    assert exit_status("distill", str(recipe)) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # a run that failed to start leaves no directory behind


def test_an_output_that_is_a_file_is_one_line_before_any_work(tiny, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    recipe = write_recipe(tmp_path, tiny, output=str(tmp_path / "taken"))
    assert exit_status("distill", str(recipe)) == 2
    assert "taken exists and is not a directory" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "taken").read_text() == "x"


def test_empty_dataset_is_one_line(tiny, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    assert exit_status("distill", str(write_recipe(tmp_path, tiny, **{"data.train": str(tmp_path / "empty")}))) == 2
    assert "fewer than seq_len=32 + 1 training tokens" in one_error_line(capsys.readouterr().err)


def test_resuming_a_finished_run_is_refused_and_rewrites_nothing(finished_run, tmp_path, capsys):
    run, _, run_dir = finished_run
    recipe = tmp_path / "same.yaml"
    recipe.write_text((run_dir / "final" / "recipe.yaml").read_text())
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert exit_status("distill", str(recipe), "--resume") == 2
    assert "is a finished run" in one_error_line(capsys.readouterr().err)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_resume_and_reuse_of_output_dirs_are_checked(tiny, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny)
    assert exit_status("distill", str(recipe), "--resume") == 2
    assert "no checkpoint to resume from" in one_error_line(capsys.readouterr().err)
    assert exit_status("distill", str(recipe), "--stop-after", "2") in (0, None)
    assert "--resume" in capsys.readouterr().out
    assert exit_status("distill", str(recipe)) == 2
    assert "already holds a run" in one_error_line(capsys.readouterr().err)
    other = write_recipe(tmp_path, tiny, "other.yaml", **{"stage1.lr": 0.5})
    assert exit_status("distill", str(other), "--resume") == 2
    assert "another recipe" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_cpu_smoke_recipe_lowers_both_losses(tmp_path):
    """The README's smoke recipe on the bundled SmolLM2-135M (PyTorch backend): both stages learn."""
    recipe = load_recipe(ROOT / "recipes" / "cpu-smoke.yaml",
                         [f"output={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"])
    summary = DistillRun(recipe, progress=False).run()
    rows = metrics(tmp_path / "run")
    stage1 = [r["loss"] for r in rows if r["stage"] == "stage1" and "loss" in r]
    stage2 = [r["loss"] for r in rows if r["stage"] == "stage2" and "loss" in r]
    assert sum(stage1[-3:]) / 3 < 0.9 * sum(stage1[:3]) / 3, stage1
    half = len(stage2) // 2
    assert sum(stage2[half:]) / (len(stage2) - half) < sum(stage2[:half]) / half, stage2
    # held-out perplexity (text training never sees) improves at each stage
    assert summary["ppl_ratio_stage2"] < summary["ppl_ratio_stage1"] < summary["ppl_ratio_before"], summary


@pytest.mark.gpu
def test_distill_runs_on_the_gpu_in_bf16_with_triton_kernels(tmp_path, word_tokenizer, word_corpus):
    """The GPU path of a run: bf16 autocast around the Triton chunk kernels, head dim 64 as SmolLM2's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = tmp_path / "tiny"
    cfg = LlamaConfig(vocab_size=len(word_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(tiny / "model")
    word_tokenizer.save_pretrained(tiny / "model")
    (tiny / "data").symlink_to(word_corpus, target_is_directory=True)
    overrides = {"precision": "bf16", "device": "cuda", "stage1.steps": 8, "stage2.steps": 4, "data.seq_len": 64,
                 "data.heldout_fraction": 0.25}
    run = DistillRun(load_recipe(write_recipe(tmp_path, tiny, **overrides)), progress=False)
    summary = run.run()
    rows = metrics(tmp_path / "run")
    stage1 = [r["loss"] for r in rows if r["stage"] == "stage1" and "loss" in r]
    assert all(torch.isfinite(torch.tensor(stage1))) and stage1[-1] < stage1[0], stage1
    assert torch.isfinite(torch.tensor(summary["ppl_ratio_stage2"]))
    assert next(run.student.parameters()).is_cuda

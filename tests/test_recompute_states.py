"""recompute_states (keep the kernels' state walk for the backward): recipe -> ConversionConfig -> layer -> op.

A training-time choice: the live layers get it, exported checkpoints do not store it, and resuming a run may
change it. The layer passes ``recompute_states=False`` to its op only when it is set, so default calls are the
op's plain call.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as tf
from transformers import AutoModelForCausalLM

from clitools import WITHOUT_TOOLKIT

import rla_convert  # noqa: F401  (registers model_type "rla")
import rla_kernels
from rla_convert.config import TRAINING_ONLY, ConversionConfig
from rla_convert.convert import convert_model
from rla_convert.distill.recipe import load_recipe
from rla_convert.distill.trainer import DistillRun, recipe_fingerprint
from rla_convert.errors import UserError
from rla_convert.layers import ResidualAttention, set_recompute_states
from rla_convert.models.export import save_converted

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

RECIPE = """\
model: {model}
conversion:
  variant: {variant}
data:
  train: {train}
"""


def _layer(variant, **kw):
    return ResidualAttention(hidden_size=32, num_heads=4, num_k_heads=2, head_dim=8, variant=variant, **kw)


def _capture(layer):
    """Record the keyword arguments of each op call of ``layer`` (and still run the op)."""
    calls, op = [], layer._op

    def recording(*args, **kwargs):
        calls.append(dict(kwargs))
        if layer.variant == "rla":  # rla() takes it once the kernels have it; here only its arrival counts
            kwargs.pop("recompute_states", None)
        return op(*args, **kwargs)  # rdn and gdn: the real op takes it

    layer._op = recording
    return calls


def _recording_op(monkeypatch, variant="rdn"):
    """Wrap rla_kernels.rdn / .rla itself (the op a layer binds at construction) and record its kwargs."""
    calls, real = [], getattr(rla_kernels, variant)

    def op(*args, **kwargs):
        calls.append(dict(kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(rla_kernels, variant, op)
    return calls


@pytest.mark.parametrize("variant", ["rla", "rdn", "gdn"])
def test_the_layer_passes_it_to_the_op_only_when_false(variant):
    layer = _layer(variant, recompute_states=False)
    assert layer.recompute_states is False and "recompute_states=False" in repr(layer)
    calls = _capture(layer)
    x = torch.randn(2, 5, 32, requires_grad=True)
    layer(x)[0].sum().backward()
    assert calls[-1]["recompute_states"] is False
    layer.recompute_states = True  # read at each call: a live model can change it
    layer(x)
    assert "recompute_states" not in calls[-1]
    default = _layer(variant)
    assert default.recompute_states is True and "recompute_states" not in repr(default)
    default_calls = _capture(default)
    default(x)
    assert "recompute_states" not in default_calls[-1]


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_layer_runs_forward_and_backward_with_it_end_to_end(variant, monkeypatch):
    """The real rla_kernels op receives recompute_states=False (the torch backend ignores it): same output and
    gradients as the default layer."""
    calls = _recording_op(monkeypatch, variant)
    torch.manual_seed(0)
    keep = _layer(variant, recompute_states=False).double()
    rerun = _layer(variant).double()
    rerun.load_state_dict(keep.state_dict())
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    outs = []
    for layer in (keep, rerun):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)[0]
        out.square().sum().backward()
        outs.append((out.detach(), xi.grad, layer.A_log.grad, layer.gamma_proj.weight.grad))
    assert calls[0]["recompute_states"] is False and "recompute_states" not in calls[1]
    for a, b in zip(*outs):
        assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_layer_keeps_the_triton_walk_with_the_same_gradients(variant, monkeypatch):
    """With the Triton backend (the interpreter on CPU) the kept walk is really used: gradients match the rerun."""
    calls = _recording_op(monkeypatch, variant)
    import rla_kernels.api as api

    walks, real_ops = [], api.ops

    class SpyOps:  # the library ops the api calls: record chunk_fwd's keep, delegate everything
        def __getattr__(self, name):
            return getattr(real_ops, name)

        def chunk_fwd(self, *args):
            walks.append(args[-1])
            return real_ops.chunk_fwd(*args)

    monkeypatch.setattr(api, "ops", SpyOps())
    torch.manual_seed(0)
    keep = _layer(variant, recompute_states=False, backend="triton")
    rerun = _layer(variant, backend="triton")
    rerun.load_state_dict(keep.state_dict())
    x = torch.randn(1, 40, 32)
    grads = []
    for layer in (keep, rerun):
        xi = x.clone().requires_grad_(True)
        layer(xi)[0].square().sum().backward()
        grads.append((xi.grad, layer.b_proj.weight.grad, layer.gamma_proj.weight.grad))
    assert calls[0]["recompute_states"] is False and calls[0]["backend"] == "triton"
    assert walks == [2, 1]  # the whole walk kept for the first layer, its per-token tensors for the second
    for a, b in zip(*grads):
        assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_config_validates_it_and_keeps_it_out_of_the_exported_dict():
    assert ConversionConfig().recompute_states is True
    with pytest.raises(UserError, match="recompute_states must be true or false.*got 'no'"):
        ConversionConfig(recompute_states="no")
    config = ConversionConfig(recompute_states=False)
    assert config.to_dict()["recompute_states"] is False
    assert TRAINING_ONLY == ("recompute_states",) and "recompute_states" not in config.model_dict()
    assert ConversionConfig.from_dict(config.model_dict()).recompute_states is True  # an export's conversion


def _recipe(tmp_path, overrides=(), variant="rdn", model="smollm2-135m"):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(model=model, variant=variant, train=tmp_path / "t.txt"))
    return load_recipe(path, list(overrides))


@pytest.mark.parametrize("value, shown", [("yes please", "'yes please'"), ("0", "0"), ("[false]", "[False]")])
def test_a_bad_recipe_value_is_one_line_naming_the_key(tmp_path, value, shown):
    with pytest.raises(UserError) as err:
        _recipe(tmp_path, [f"conversion.recompute_states={value}"])
    message = str(err.value)
    assert "\n" not in message
    assert f"field 'conversion.recompute_states' must be true or false, got {shown}" in message


def test_the_smollm2_rdn_and_rla_recipes_turn_it_on_and_the_others_keep_the_default():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    values = {p.stem: load_recipe(p).conversion.recompute_states for p in sorted(recipes.glob("*.yaml"))}
    assert {name for name, value in values.items() if value is False} == {
        "smollm2-135m-rdn", "smollm2-135m-rdn-hybrid", "smollm2-135m-rla"}


def test_resuming_may_change_it(tmp_path):
    default, keep = _recipe(tmp_path), _recipe(tmp_path, ["conversion.recompute_states=false"])
    assert keep.conversion.recompute_states is False and default.conversion.recompute_states is True
    assert recipe_fingerprint(keep) == recipe_fingerprint(default)
    assert recipe_fingerprint(_recipe(tmp_path, ["conversion.clip=0.5"])) != recipe_fingerprint(default)


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_recipe_value_reaches_every_layer_and_its_op_calls(tmp_path, variant, monkeypatch):
    """recipe conversion.recompute_states -> the distill run's converted student -> each layer -> each op call."""
    op_calls = _recording_op(monkeypatch, variant)  # conversion's drift check already calls the ops (no grad)
    model_dir = tmp_path / "model"
    tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL)).save_pretrained(model_dir)
    recipe = _recipe(tmp_path, ["conversion.recompute_states=false"], variant=variant, model=model_dir)
    run = DistillRun(recipe, progress=False)
    teacher = tf.LlamaForCausalLM.from_pretrained(model_dir)
    student = run._convert(teacher)  # what DistillRun.setup builds its student with
    layers = [m for m in student.modules() if isinstance(m, ResidualAttention)]
    assert len(layers) == 2 and all(layer.recompute_states is False for layer in layers)
    assert run.conversion.recompute_states is False
    del op_calls[:]
    student.train()
    student(torch.randint(0, 128, (2, 12))).logits.sum().backward()
    assert [c.get("recompute_states") for c in op_calls] == [False, False]
    set_recompute_states(student, True)
    student(torch.randint(0, 128, (2, 12)))
    assert [c.get("recompute_states", "absent") for c in op_calls[2:]] == ["absent", "absent"]
    # and it is not part of what the student saves as a checkpoint
    assert "recompute_states" not in student.config.conversion
    assert all("recompute_states" not in spec["kwargs"] for spec in student.config.conversion["layers"])


def test_exports_do_not_store_it_and_a_reloaded_model_sets_it(tmp_path):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL))
    convert_model(model, ConversionConfig(variant="rdn", recompute_states=False))
    assert all(m.recompute_states is False for m in model.modules() if isinstance(m, ResidualAttention))
    out = save_converted(model, None, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert "recompute_states" not in json.dumps(config)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    layers = [m for m in reloaded.modules() if isinstance(m, ResidualAttention)]
    assert len(layers) == 2 and all(layer.recompute_states is True for layer in layers)
    assert set_recompute_states(reloaded, False) == 2 and all(layer.recompute_states is False for layer in layers)
    with pytest.raises(TypeError, match="True or False"):
        set_recompute_states(reloaded, "false")


# The exported modeling code in a fresh interpreter without the toolkit: its shipped kernel selector must take
# (and ignore) recompute_states=False, for a user who sets it on the reloaded layers before fine-tuning.
REMOTE = WITHOUT_TOOLKIT + textwrap.dedent("""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    layers = [m for m in model.modules() if type(m).__name__ == "ResidualAttention"]
    assert len(layers) == 2 and all(m.recompute_states is True for m in layers)
    for m in layers:
        m.recompute_states = False
    model(torch.randint(0, 128, (1, 9))).logits.sum().backward()
    assert all(torch.isfinite(m.gamma_proj.weight.grad).all() for m in layers)
    print("ok")
""")


def test_the_shipped_modeling_code_accepts_it(tmp_path):
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL))
    convert_model(model, ConversionConfig(variant="rdn"))
    out = save_converted(model, None, tmp_path / "out")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    run = subprocess.run([sys.executable, "-c", REMOTE, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("options", [dict(variant="rdn"), dict(variant="rla", conv_size=4, output_gate=True),
                                     dict(variant="rdn", keep_softmax=[1])])
def test_activation_checkpointing_gives_the_same_gradients(options, reentrant):
    """transformers' activation checkpointing (what a fine-tune of a converted model turns on: Trainer's
    gradient_checkpointing=True) runs each decoder layer's forward again in the backward, the converted layers' ops
    with it: the loss and every gradient as without it, the new gate parameters' included (a hybrid too)."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = tf.LlamaForCausalLM(config)
    convert_model(model, ConversionConfig(**options))
    model.train()
    ids = torch.randint(0, 128, (2, 40))
    losses, grads = [], []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:  # (transformers 5.25 renamed it; the GPU machine's 5.17 has the old name only)
            kwargs = {"use_reentrant": reentrant}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert losses[0] == losses[1]
    assert grads[0].keys() == grads[1].keys() and any("A_log" in name for name in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)

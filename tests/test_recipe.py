"""Recipe files: typed fields, errors that name the field and the line, --set overrides."""
import textwrap

import pytest

from rla_convert.distill.recipe import load_recipe
from rla_convert.errors import UserError

GOOD = """\
model: smollm2-135m
conversion:
  variant: rla
  clip: 0.5
data:
  train: text.jsonl
  seq_len: 256
stage1:
  steps: 10
  lr: 0.003
stage2:
  steps: 20
  lora:
    r: 4
"""


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_recipe_is_typed_and_paths_are_relative_to_it(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.conversion.variant == "rla" and r.conversion.clip == 0.5
    assert r.stage2.lora.r == 4 and r.stage2.lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj",
                                                            "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"]
    assert r.data.train == str((tmp_path / "text.jsonl").resolve())
    assert isinstance(r.stage1.lr, float)


@pytest.mark.parametrize("bad, needle", [
    (GOOD.replace("  lr: 0.003", "  lrr: 0.003"), "r.yaml:10: unknown field 'stage1.lrr'"),
    (GOOD.replace("  steps: 10", "  steps: ten"), "r.yaml:9: field 'stage1.steps' must be an integer, got 'ten'"),
    (GOOD.replace("    r: 4", "    r: [4]"), "r.yaml:14: field 'stage2.lora.r' must be an integer"),
    (GOOD.replace("  variant: rla", "  variant: gla"), "variant 'gla' is not known; accepted: rla, rdn"),
    (GOOD.replace("  clip: 0.5", "  clipp: 0.5"), "r.yaml:4: unknown field 'conversion.clipp'"),
    (GOOD.replace("model: smollm2-135m\n", ""), "missing field 'model'"),
    (GOOD + "stage3: {}\n", "r.yaml:15: unknown field 'stage3'"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_recipes_name_field_and_line(tmp_path, bad, needle):
    with pytest.raises(UserError) as err:
        load_recipe(_write(tmp_path, bad))
    assert needle in str(err.value)


def test_set_overrides_any_field_before_checks(tmp_path):
    path = _write(tmp_path, GOOD)
    r = load_recipe(path, ["stage2.lr=1e-4", "stage2.lora.alpha=32", "eval.passkey=[512, 1024]", "conversion.variant=rdn"])
    assert r.stage2.lr == 1e-4 and r.stage2.lora.alpha == 32 and r.eval.passkey == [512, 1024]
    assert r.conversion.variant == "rdn"
    with pytest.raises(UserError, match=r"\(--set\): field 'stage1.steps' must be an integer"):
        load_recipe(path, ["stage1.steps=1.5"])
    with pytest.raises(UserError, match="expected FIELD=VALUE"):
        load_recipe(path, ["stage1.steps"])
    with pytest.raises(UserError, match=r"--set 'stage2.lr=\[1,': the value is not valid YAML"):
        load_recipe(path, ["stage2.lr=[1,"])
    with pytest.raises(UserError, match=r"data.heldout_fraction must be in \[0, 1\), got 1.5"):
        load_recipe(path, ["data.heldout_fraction=1.5"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")

import pytest

from clitools import run_process
from rla_convert.checkpoints import BUNDLED_MODELS, resolve_checkpoint
from rla_convert.errors import UserError


def test_bundled_name_resolves_to_the_gguf_file():
    source = resolve_checkpoint("smollm2-135m")
    assert (source.directory / source.gguf_file).is_file()
    assert source.gguf_file.endswith(".gguf")


def test_unknown_name_lists_accepted_forms():
    with pytest.raises(UserError) as err:
        resolve_checkpoint("llama-9000")
    message = str(err.value)
    assert "llama-9000" in message
    for name in BUNDLED_MODELS:
        assert name in message


def test_local_directory_with_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_checkpoint(str(tmp_path)).directory == tmp_path


@pytest.mark.slow
def test_info_on_the_bundled_model_prints_its_architecture():
    result = run_process("info", "smollm2-135m", timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("layers       30", "heads        9", "kv_heads     3", "head_dim     64", "hidden_size  576"):
        assert line in out, line
    assert "layers 0-29" in out and "softmax" in out and "LlamaAttention" in out
    assert "de-quantizing" in result.stderr  # the progress bar while the GGUF is dequantised

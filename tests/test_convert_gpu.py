"""GPU checks of conversion (run on the GPU machine): fla's full GatedDeltaNet model, and the Triton path.

    pytest tests/test_convert_gpu.py -q -p no:logging -s     (prints one table row per check)
"""
import pytest
import torch
import transformers as tf

from rla_convert.config import ConversionConfig
from rla_convert.convert import convert_model

pytestmark = pytest.mark.gpu


def recompute_greedy(model, ids, steps):
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    return ids


def test_fla_gated_deltanet_model_to_rdn_on_gpu():
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    config = GatedDeltaNetConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=32, expand_v=2)
    model = GatedDeltaNetForCausalLM(config).cuda().eval()
    result = convert_model(model, ConversionConfig(variant="rdn"))
    assert [r.action for r in result.report.rows] == ["rdn", "rdn"]
    print(f"\nfla GDN -> RDN drift: {result.drift}")
    assert result.drift is not None and result.drift.relative_error < 1.0
    ids = torch.randint(0, 256, (1, 9), device="cuda")
    assert torch.equal(model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False), recompute_greedy(model, ids, 8))


@pytest.mark.parametrize("variant", ["rla", "rdn"])
def test_triton_backend_matches_torch_backend_in_a_converted_model(variant):
    config = tf.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    model = tf.LlamaForCausalLM(config).cuda().eval()
    convert_model(model, ConversionConfig(variant=variant))
    ids = torch.randint(0, 256, (2, 200), device="cuda")
    layers = [m for m in model.modules() if type(m).__name__ == "ResidualAttention"]
    with torch.no_grad():
        triton_logits = model(ids).logits.float()  # the default on CUDA is the Triton backend
        from rla_convert.layers.ops import kernel_op

        for layer in layers:
            layer._op = kernel_op(variant, "torch")
        torch_logits = model(ids).logits.float()
    err = ((triton_logits - torch_logits).norm() / torch_logits.norm()).item()
    print(f"\n{variant}: triton vs torch backend, fp32 logits rel err {err:.2e}")
    assert err < 1e-3
    for layer in layers:
        layer._op = kernel_op(variant, None)
    short = ids[:1, :12]
    assert torch.equal(model.generate(short, max_new_tokens=8, min_new_tokens=8, do_sample=False), recompute_greedy(model, short, 8))

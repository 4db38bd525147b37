"""Which layers of a softmax teacher retrieve a passkey: the data behind a hybrid recipe's keep_softmax.

For passkey prompts (rla_convert/eval/passkey.py) with the answer appended, measures per layer and head
the attention mass that the positions predicting the answer put on the needle's digit tokens, averaged
over prompts. Layers whose heads look the key up are the ones a conversion should keep as softmax when
retrieval matters (every converted SmolLM2 layer loses it: BENCHMARKS.md, passkey 0.00).

    .venv/bin/python scripts/retrieval_layers.py [MODEL] [--length 384] [--prompts 12] [--top 4]

CPU, eager attention; ~1 min for SmolLM2-135M. Prints one row per layer and the top layers by
(best head + mean over heads).
"""
from __future__ import annotations

import argparse
import random

import torch

from rla_convert.checkpoints import load_checkpoint
from rla_convert.eval.passkey import _prompt_text, answer_tokens


def needle_attention(model, tokenizer, length: int, prompts: int, seed: int = 0) -> torch.Tensor:
    """[layers, heads]: mean attention mass from the answer-predicting positions onto the needle digits."""
    config = model.config.get_text_config()
    score = torch.zeros(config.num_hidden_layers, config.num_attention_heads)
    rng = random.Random(seed)
    for _ in range(prompts):
        key = rng.randint(10000, 99999)
        text = _prompt_text(tokenizer, length, key, rng.random())
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        full = ids + answer_tokens(tokenizer, text, ids, key)
        digits = [i for i in range(len(ids)) if tokenizer.decode([full[i]]).strip().isdigit()]
        rows = list(range(len(ids) - 1, len(full) - 1))
        with torch.no_grad():
            attentions = model(torch.tensor([full]), output_attentions=True).attentions
        for layer, a in enumerate(attentions):
            score[layer] += a[0][:, rows][:, :, digits].sum(-1).mean(-1)
    return score / prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--top", type=int, default=4)
    args = parser.parse_args()
    model, tokenizer = load_checkpoint(args.model, attn_implementation="eager")[:2]
    score = needle_attention(model.eval(), tokenizer, args.length, args.prompts)
    best, mean = score.max(-1), score.mean(-1)
    print("layer  best head  mass  mean over heads")
    for layer in range(score.shape[0]):
        print(f"{layer:5d}  {best.indices[layer].item():9d}  {best.values[layer]:.3f}  {mean[layer]:.3f}")
    top = sorted(range(score.shape[0]), key=lambda l: -(best.values[l] + mean[l]).item())[:args.top]
    print(f"top {args.top} by best head + mean: {sorted(top)}")


if __name__ == "__main__":
    main()

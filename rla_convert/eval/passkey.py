"""Passkey retrieval: a number hidden at a random depth in filler text, asked for at the end."""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    """Token ids of a prompt of about `length` tokens with the key at relative `depth` in the filler."""
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer(intro + needle + QUESTION, add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(FILLER * 8, add_special_tokens=False)["input_ids"]) / 8
    n_filler = max(0, int((length - fixed) / per_filler))
    before = int(n_filler * depth)
    text = intro + FILLER * before + needle + FILLER * (n_filler - before) + QUESTION
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def passkey_accuracy(model, tokenizer, length: int, n_prompts: int = 50, seed: int = 0,
                     progress: bool = True) -> dict:
    """Share of prompts whose key greedy decoding would write right after the question.

    Scored in one forward pass per prompt: the answer's tokens (`` 12345``) are appended and a prompt
    counts as correct when the model's argmax at every answer position is the answer's next token,
    which is exactly when greedy decoding emits the key first. No decode loop: a converted model's
    step-by-step decoding is launch-bound, and this is the same verdict at a small fraction of the time.
    """
    rng = random.Random(seed + length)
    device = next(model.parameters()).device
    correct, lengths = 0, []
    for _ in tqdm(range(n_prompts), desc=f"passkey@{length}", disable=not progress, leave=False):
        key = rng.randint(10000, 99999)
        ids = passkey_prompt(tokenizer, length, key, depth=rng.random())
        answer = tokenizer(f" {key}", add_special_tokens=False)["input_ids"]
        lengths.append(len(ids))
        logits = model(input_ids=torch.tensor([ids + answer], device=device), use_cache=False).logits
        predicted = logits[0, len(ids) - 1: len(ids) - 1 + len(answer)].argmax(-1)
        correct += bool((predicted == torch.tensor(answer, device=device)).all())
    return {"length": length, "prompt_tokens_mean": sum(lengths) / len(lengths), "prompts": n_prompts,
            "accuracy": correct / n_prompts}

"""Passkey retrieval: a number hidden at a random depth in filler text, asked for at the end."""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    """Token ids of a prompt of about `length` tokens with the key at relative `depth` in the filler."""
    return tokenizer(_prompt_text(tokenizer, length, key, depth), add_special_tokens=False)["input_ids"]


def answer_tokens(tokenizer, prompt_text: str, prompt_ids: list[int], key: int) -> list[int]:
    """The key's tokens as they continue the prompt: tokenised in context (a SentencePiece tokenizer
    would give a standalone " 12345" a different first token), alone only if context tokenisation
    changed the prompt's own tokens."""
    full = tokenizer(prompt_text + f" {key}", add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):]
    return tokenizer(f" {key}", add_special_tokens=False)["input_ids"]


def _prompt_text(tokenizer, length: int, key: int, depth: float) -> str:
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    fixed = len(tokenizer(intro + needle + QUESTION, add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(FILLER * 8, add_special_tokens=False)["input_ids"]) / 8
    n_filler = max(0, int((length - fixed) / per_filler))
    before = int(n_filler * depth)
    return intro + FILLER * before + needle + FILLER * (n_filler - before) + QUESTION


@torch.no_grad()
def passkey_accuracy(model, tokenizer, length: int, n_prompts: int = 50, seed: int = 0,
                     progress: bool = True) -> dict:
    """Share of prompts whose key greedy decoding would write right after the question.

    Scored in one forward pass per prompt: the answer's tokens (`` 12345``) are appended and a prompt
    counts as correct when the model's argmax at every answer position is the answer's next token,
    which is exactly when greedy decoding writes `` 12345`` straight after the question. (Stricter than
    looking for the key anywhere in a few generated tokens.) No decode loop: a converted model's
    step-by-step decoding is launch-bound; one forward pass per prompt takes a fraction of the time.
    """
    rng = random.Random(seed + length)
    device = next(model.parameters()).device
    correct, lengths = 0, []
    for _ in tqdm(range(n_prompts), desc=f"passkey@{length}", disable=not progress, leave=False):
        key = rng.randint(10000, 99999)
        text = _prompt_text(tokenizer, length, key, depth=rng.random())
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = answer_tokens(tokenizer, text, ids, key)
        lengths.append(len(ids))
        logits = model(input_ids=torch.tensor([ids + answer], device=device), use_cache=False).logits
        predicted = logits[0, len(ids) - 1: len(ids) - 1 + len(answer)].argmax(-1)
        correct += bool((predicted == torch.tensor(answer, device=device)).all())
    return {"length": length, "prompt_tokens_mean": sum(lengths) / len(lengths), "prompts": n_prompts,
            "accuracy": correct / n_prompts}

"""Greedy agreement with a teacher: how often the student's next token equals the teacher's greedy one.

For each held-out prompt the teacher continues greedily for `new_tokens` tokens; the student is then
run teacher-forced over prompt + continuation, and agreement is the share of those continuation
positions where the student's argmax equals the teacher's token. Teacher forcing keeps one early
disagreement from counting against every later position.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def greedy_agreement(student, teacher, token_ids: torch.Tensor, n_prompts: int = 16, prompt_len: int = 128,
                     new_tokens: int = 32, pad_token_id: int | None = None, progress: bool = True) -> dict:
    span = prompt_len + new_tokens
    n_prompts = min(n_prompts, token_ids.numel() // span)
    if n_prompts == 0:
        raise ValueError(f"need at least {span} tokens of held-out text for one prompt")
    device = next(student.parameters()).device
    matches = total = 0
    for i in tqdm(range(n_prompts), desc="agreement", disable=not progress, leave=False):
        prompt = token_ids[i * span : i * span + prompt_len].unsqueeze(0).to(device)
        full = teacher.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=pad_token_id)
        logits = student(input_ids=full, use_cache=False).logits
        predicted = logits[0, prompt_len - 1 : -1].argmax(-1)
        target = full[0, prompt_len:]
        matches += (predicted == target).sum().item()
        total += target.numel()
    return {"agreement": matches / total, "prompts": n_prompts, "prompt_len": prompt_len, "new_tokens": new_tokens}

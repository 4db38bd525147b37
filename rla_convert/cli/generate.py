"""`rla-convert generate MODEL --prompt TEXT`: greedy text from a model, each decode step a CUDA-graph replay."""
from __future__ import annotations

import click

from ..errors import UserError
from ..devices import resolve_device


@click.command()
@click.argument("model")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="Prompt text; repeat the option for a batch (left-padded to one length).")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Replay each step as a CUDA graph. Default: when the model allows it on a CUDA device.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: bfloat16 on CUDA, float32 on CPU.")
def generate(model, prompts, max_new_tokens, cuda_graph, device, dtype):
    """Greedy continuation of each --prompt, then the speed (stderr): prefill ms, decode ms per token.

    MODEL is a bundled name, a checkpoint directory (a converted export too), a .gguf file, or the output
    directory of a finished `rla-convert distill` run. Converted models decode with fixed-size states, so
    with a CUDA graph their time per token does not grow with the prompt.
    """
    import torch

    from ..checkpoints import load_checkpoint
    from ..distill.artifact import is_run_dir, load_distilled
    from ..generate import greedy_generate

    if any(p == "" for p in prompts):
        raise UserError("--prompt '' is empty: give the text to continue")
    dev = resolve_device(device)
    torch_dtype = (torch.bfloat16 if dev.type == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    if cuda_graph and dev.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device; this run is on {dev} (drop the flag, or --device cuda)")
    if is_run_dir(model):
        run = load_distilled(model, dtype=torch_dtype)
        lm, tokenizer = run.model, run.tokenizer
    else:
        lm, tokenizer = load_checkpoint(model, dtype=torch_dtype)
    if tokenizer is None:
        raise UserError(f"{model!r} has no tokenizer to turn --prompt into tokens")
    if len(prompts) > 1 and tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UserError(f"the tokenizer of {model!r} has neither a pad nor an eos token to pad prompts of "
                            "different lengths with: give one --prompt")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    batch = tokenizer(list(prompts), return_tensors="pt", padding=len(prompts) > 1)
    eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    lm.to(dev).eval()
    result = greedy_generate(lm, batch["input_ids"].to(dev), max_new_tokens, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, cuda_graph=cuda_graph,
                             attention_mask=batch["attention_mask"].to(dev))
    for ids, mask, new in zip(batch["input_ids"], batch["attention_mask"], result.tokens.cpu()):
        # prompt and continuation decoded together: a tokenizer may only space words apart in context
        click.echo(tokenizer.decode(ids[mask.bool()].tolist() + new.tolist(), skip_special_tokens=True))
    how = "CUDA-graph replay" if result.graphed else "eager"
    speed = f"decode {result.ms_per_token:.2f} ms/token ({how})" if result.ms_per_token is not None else "no decode step"
    click.echo(f"{result.tokens.shape[1]} new tokens x {len(prompts)} prompt(s), {dev}, "
               f"{str(torch_dtype).removeprefix('torch.')}: prefill {result.prefill_ms:.1f} ms, {speed}"
               + (f"; {result.note}" if result.note else ""), err=True)

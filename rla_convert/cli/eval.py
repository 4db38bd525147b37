"""`rla-convert eval MODEL_OR_DIR`: perplexity, passkey retrieval and greedy agreement with a teacher."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from ..devices import resolve_device


def _int_list(ctx, param, value):
    if not value:
        return []
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token counts like 512,1024,2048, got {value!r}") from None
    if any(x < 64 for x in out):
        raise click.BadParameter("passkey lengths must be at least 64 tokens")
    return out


@click.command(name="eval")
@click.argument("model")
@click.option("--text", "text_path", type=click.Path(), help="Held-out text: .txt, .jsonl, .parquet, a datasets directory, or a directory of files.")
@click.option("--window", default=512, show_default=True, type=click.IntRange(min=2), help="Perplexity window (packed, non-overlapping).")
@click.option("--max-tokens", default=65536, show_default=True, type=click.IntRange(min=2), help="Score at most this many tokens of --text.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--passkey", "passkey_lengths", default="", callback=_int_list, help="Passkey prompt lengths, e.g. 512,1024,2048.")
@click.option("--passkey-n", default=50, show_default=True, type=click.IntRange(min=1), help="Prompts per passkey length.")
@click.option("--teacher", help="Teacher model for greedy agreement (needs --text).")
@click.option("--agreement-prompts", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
def eval_cmd(model, text_path, window, max_tokens, batch_size, passkey_lengths, passkey_n, teacher,
             agreement_prompts, device, dtype, json_path):
    """Perplexity on held-out text, passkey retrieval, and greedy agreement with a teacher.

    MODEL is a bundled name, a checkpoint directory (a converted export too), a .gguf file, or the output
    directory of a finished `rla-convert distill` run.
    """
    import torch

    from ..checkpoints import load_checkpoint, resolve_checkpoint
    from ..eval import greedy_agreement, load_text, passkey_accuracy, perplexity, tokenize_text

    if not text_path and not passkey_lengths:
        raise UserError("nothing to evaluate: give --text FILE (perplexity, agreement) and/or --passkey LENGTHS")
    if teacher and not text_path:
        raise UserError("--teacher measures agreement on held-out prompts: it needs --text FILE")
    if json_path and not Path(json_path).resolve().parent.is_dir():  # checked before the work, not after it
        raise UserError(f"--json {json_path}: the directory {Path(json_path).parent} does not exist")
    if teacher:
        resolve_checkpoint(teacher)  # a bad name fails now, not after the perplexity
    dev = resolve_device(device)
    torch_dtype = getattr(torch, dtype)
    text = load_text(text_path) if text_path else None  # read before the slow model load: fail fast

    from ..distill.artifact import is_run_dir, load_distilled

    if is_run_dir(model):  # a distillation run: its base model, converted, with the trained parameters merged
        run = load_distilled(model, dtype=torch_dtype)
        lm, tokenizer = run.model, run.tokenizer
    else:
        lm, tokenizer = load_checkpoint(model, dtype=torch_dtype)
    lm.to(dev).eval()
    results = {"model": model, "device": str(dev), "dtype": dtype}
    if text is not None:
        ids = tokenize_text(tokenizer, text, max_tokens)
        try:
            results["perplexity"] = perplexity(lm, ids, window=window, batch_size=batch_size)
        except ValueError as err:
            raise UserError(f"--text {text_path}: {err}") from None
        if teacher:
            teacher_lm, _ = load_checkpoint(teacher, dtype=torch_dtype, with_tokenizer=False)
            teacher_lm.to(dev).eval()
            try:
                results["agreement"] = greedy_agreement(lm, teacher_lm, ids, n_prompts=agreement_prompts,
                                                        pad_token_id=tokenizer.eos_token_id)
            except ValueError as err:
                raise UserError(f"--text {text_path}: {err}") from None
            results["agreement"]["teacher"] = teacher
    if passkey_lengths:
        results["passkey"] = [passkey_accuracy(lm, tokenizer, n, n_prompts=passkey_n) for n in passkey_lengths]

    _print_table(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def _print_table(results: dict) -> None:
    click.echo(f"{'metric':<28} value")
    if "perplexity" in results:
        p = results["perplexity"]
        click.echo(f"{'perplexity':<28} {p['perplexity']:.3f}  ({p['tokens_scored']} tokens, {p['windows']} x {p['window']}-token windows)")
    if "agreement" in results:
        a = results["agreement"]
        click.echo(f"{'greedy agreement':<28} {a['agreement']:.3f}  ({a['prompts']} prompts x {a['new_tokens']} tokens vs {a['teacher']})")
    for row in results.get("passkey", []):
        click.echo(f"{'passkey@' + str(row['length']):<28} {row['accuracy']:.2f}  ({row['prompts']} prompts, ~{row['prompt_tokens_mean']:.0f} tokens)")

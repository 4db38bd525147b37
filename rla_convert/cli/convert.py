"""`rla-convert convert MODEL` (the default command): rewrite, initialise, report, export."""
from __future__ import annotations

import click

from ..errors import UserError


def _clip(value: str):
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"--clip {value!r}: expected a positive number or 'none'") from None


@click.command()
@click.argument("model")
@click.option("--variant", default="rdn", show_default=True,
              help="rla, rdn, or gdn (a baseline: the plain gated delta rule, no residual branch).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write the converted checkpoint here.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--keep-softmax", default="", help="Layers left as softmax: indices like 0,15 (one layer: 15,), or a count like 4 (evenly spaced).")
@click.option("--clip", "clip", default="1.0", show_default=True, help="Residual clip threshold c, or 'none'.")
@click.option("--residual", default="clip", show_default=True, help="Residual function: clip or tanh.")
@click.option("--gate-init", default="auto", show_default=True, help="Gate init strategy: auto, mamba2, long-memory, small-residual.")
@click.option("--conv-size", default=0, show_default=True, help="Short causal conv on q/k/v for softmax sources (0: none).")
@click.option("--drop-rope", is_flag=True, help="Do not rotate q/k with RoPE in converted layers.")
@click.option("--output-gate", is_flag=True, help="Add GDN's output norm + SiLU gate to converted softmax layers.")
@click.option("--backend", default=None, help="Kernel backend recorded in the config: torch, triton or naive (default: automatic).")
@click.option("--seed", default=0, show_default=True, help="Seed for the random parts of gate initialisation.")
@click.option("--dtype", "dtype_name", default="auto", show_default=True,
              help="Dtype of the exported weights: auto (the checkpoint's own: bf16 stays bf16; a GGUF exports "
                   "float32), float32, bfloat16 or float16.")
def convert(model, variant, out_dir, force, keep_softmax, clip, residual, gate_init, conv_size, drop_rope,
            output_gate, backend, seed, dtype_name):
    """Convert MODEL's attention into RLA / RDN layers and (with --out) export a checkpoint.

    MODEL is a bundled name (smollm2-135m), a checkpoint directory, or a .gguf file. The export loads
    with `import rla_convert` + AutoModelForCausalLM.from_pretrained(DIR), or with trust_remote_code=True.
    """
    from ..config import ConversionConfig, parse_keep_softmax
    from ..models.export import check_output_dir

    config = ConversionConfig(variant=variant, clip=_clip(clip), residual=residual, gate_init=gate_init,
                              conv_size=conv_size, keep_rope=not drop_rope, output_gate=output_gate,
                              backend=backend, seed=seed)
    parse_keep_softmax(keep_softmax, None)  # its syntax, before the slow load
    if out_dir:
        check_output_dir(out_dir, force)  # fail before the slow load

    import torch

    from ..checkpoints import export_dtype, load_checkpoint
    from ..inspect import decoder_layers

    dtype = export_dtype(dtype_name, model)  # (a bad value or model: before the slow load)
    click.echo(f"loading {model} ...", err=True)
    # converted in float32 (the weight mapping, the gates' initialisation and the drift report), exported in dtype
    lm, _ = load_checkpoint(model, dtype=torch.float32, with_tokenizer=False)
    tokenizer = _tokenizer_or_none(model)
    found = decoder_layers(lm)
    config.keep_softmax = parse_keep_softmax(keep_softmax, len(found[1]) if found else 0)
    config.source = {"name": model}
    run_conversion(lm, tokenizer, config, out_dir, force, dtype)


def _tokenizer_or_none(model):
    """The checkpoint's tokenizer; a checkpoint without one still converts (the export then has none)."""
    from transformers import AutoTokenizer

    from ..checkpoints import resolve_checkpoint

    source = resolve_checkpoint(model)
    try:
        return AutoTokenizer.from_pretrained(str(source.directory), **source.pretrained_kwargs())
    except Exception as err:  # noqa: BLE001  (any tokenizer failure: say it, keep going)
        click.echo(f"note: no tokenizer exported ({type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''})", err=True)
        return None


def run_conversion(lm, tokenizer, config, out_dir, force, dtype=None):
    """Convert ``lm`` with ``config``, report, and with ``out_dir`` export it, its weights cast to ``dtype`` (None:
    as they are)."""
    from tqdm import tqdm

    from ..convert import convert_model
    from ..models.export import dtype_name, save_converted

    params_before = sum(p.numel() for p in lm.parameters())
    progress = lambda plan: tqdm(plan, desc=f"converting to {config.variant}", unit="layer")  # noqa: E731
    result = convert_model(lm, config, progress=progress)
    print_summary(result, params_before)
    if out_dir:
        path = save_converted(result.model, tokenizer, out_dir, force=force, dtype=dtype)
        click.echo(f"wrote {path} ({dtype_name(result.model.dtype)} weights)")
    return result


def print_summary(result, params_before: int) -> None:
    report = result.report
    click.echo(f"{'layer':>5}  {'module':<28} {'was':<24} {'now':<6} {'params before':>13} {'after':>10}")
    for row in report.rows:
        click.echo(f"{row.index:>5}  {row.path:<28} {row.old_class:<24} {row.action:<6} {row.params_before:>13,} {row.params_after:>10,}")
    params_after = sum(p.numel() for p in result.model.parameters())
    click.echo(f"replaced {len(report.replaced)} of {len(report.rows)} attention layers ({report.source_kind} source), "
               f"gate init: {report.gate_init}")
    click.echo(f"parameters: {params_before:,} -> {params_after:,} ({params_after - params_before:+,})")
    if result.drift is not None:
        note = f" ({result.drift_note})" if result.drift_note else ""
        click.echo(f"drift right after conversion (random tokens): relative logit error {result.drift.relative_error:.4f}, "
                   f"top-1 agreement {result.drift.top1_agreement:.3f}{note}")
    else:
        click.echo(f"drift: {result.drift_note}")

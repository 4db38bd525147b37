"""`rla-convert export RUN_DIR --out DIR`: merge a distillation run into a loadable checkpoint.

Converting and exporting without distillation is `rla-convert MODEL --variant rdn --out DIR`.
"""
import click


@click.command(name="export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Directory to write the checkpoint to.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(run_dir, out_dir, force):
    """Merge the LoRA adapters and trained gates of the distillation run RUN_DIR into its base model and
    write DIR: safetensors, config (base architecture and every conversion option), tokenizer and modeling
    code, loadable with AutoModelForCausalLM after `import rla_convert` or with trust_remote_code=True.

    To convert and export without distillation: rla-convert MODEL --variant rdn --out DIR.
    """
    from ..distill.artifact import load_distilled
    from ..models.export import check_output_dir, save_converted

    check_output_dir(out_dir, force)  # before minutes of loading
    run = load_distilled(run_dir)
    path = save_converted(run.model, run.tokenizer, out_dir, force=force)
    ratio = run.summary.get("ppl_ratio_stage2")
    note = f" (held-out perplexity ratio to the teacher after distillation: {ratio:.3f})" if ratio else ""
    click.echo(f"wrote {path}{note}")

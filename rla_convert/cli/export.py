"""`rla-convert export RUN_DIR --out DIR`: merge a distillation run into a loadable checkpoint.

Converting and exporting without distillation is `rla-convert MODEL --variant rdn --out DIR`.
"""
import click


@click.command(name="export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Directory to write the checkpoint to.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--dtype", "requested", default="auto", show_default=True,
              help="Dtype of the exported weights: auto (the run's base checkpoint's own: bf16 stays bf16; a GGUF "
                   "exports float32), float32, bfloat16 or float16.")
def export(run_dir, out_dir, force, requested):
    """Merge the LoRA adapters and trained gates of the distillation run RUN_DIR into its base model and
    write DIR: safetensors, config (base architecture and every conversion option), tokenizer and modeling
    code, loadable with AutoModelForCausalLM after `import rla_convert` or with trust_remote_code=True.

    To convert and export without distillation: rla-convert MODEL --variant rdn --out DIR.
    """
    from ..checkpoints import check_export_dtype, export_dtype
    from ..distill.artifact import load_distilled
    from ..models.export import check_output_dir, dtype_name, save_converted

    check_output_dir(out_dir, force)  # both before minutes of loading
    check_export_dtype(requested)
    run = load_distilled(run_dir)
    dtype = export_dtype(requested, run.recipe.model)
    path = save_converted(run.model, run.tokenizer, out_dir, force=force, dtype=dtype)
    ratio = run.summary.get("ppl_ratio_stage2")
    note = f" (held-out perplexity ratio to the teacher after distillation: {ratio:.3f})" if ratio else ""
    click.echo(f"wrote {path} ({dtype_name(run.model.dtype)} weights){note}")

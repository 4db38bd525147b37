"""`rla-convert bench kernels` (the ops side by side with fla and FlashAttention) and `bench model`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from ._common import not_built

GPU_SEQ_LENS = "2048,4096,8192,16384,32768"
GPU_DECODE_CONTEXTS = "2048,8192,32768,131072"


def _int_list(value: str, option: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated positive integers like 2048,4096; got {value!r}") from None
    if not out or any(x < 1 for x in out):
        raise UserError(f"{option} takes comma-separated positive integers like 2048,4096; got {value!r}")
    return out


def _name_list(value: str, option: str, accepted) -> list[str]:
    out = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in out if x not in accepted]
    if not out or unknown:
        raise UserError(f"{option}: unknown {unknown or value!r}; accepted: {', '.join(accepted)}")
    return out


@click.group(name="bench")
def bench():
    """Benchmarks: kernels (the ops), model (not built yet: issue #6)."""


@bench.command(name="kernels")
@click.option("--seq-lens", default=None, help=f"Sequence lengths T [default: {GPU_SEQ_LENS}; smoke: 32,64].")
@click.option("--tokens", type=int, default=None, help="Tokens per call, B*T [default: 32768; smoke: 128].")
@click.option("--heads", type=int, default=None, help="Heads H [default: 16; smoke: 2].")
@click.option("--head-dim", type=int, default=None, help="Head dim of q, k and v [default: 128; smoke: 32].")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="[default: bf16; smoke: fp32]")
@click.option("--ops", default="rla,rdn,fla_gdn,fla_simple_gla,sdpa_flash", show_default=True,
              help="Ops to time (decode times those of rla, rdn, fla_gdn, sdpa_flash).")
@click.option("--modes", default="fwd,fwd+bwd", show_default=True, help="fwd and/or fwd+bwd.")
@click.option("--decode-contexts", default=None,
              help=f"Context lengths before the timed decode token [default: {GPU_DECODE_CONTEXTS}; smoke: 32,128].")
@click.option("--decode-batch", type=int, default=None, help="Sequences per decode step [default: 8; smoke: 2].")
@click.option("--no-decode", is_flag=True, help="Skip the decode points.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write all results (and settings) here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Save a PNG: time against T per op.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write rows for BENCHMARKS.md here ('-' for stdout).")
@click.option("--cpu-smoke", is_flag=True, help="Tiny shapes on the PyTorch backend, CPU: tests the command path.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False),
              help="Measure nothing: re-render the table, --plot and --markdown from a saved --json file.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def kernels(seq_lens, tokens, heads, head_dim, dtype, ops, modes, decode_contexts, decode_batch, no_decode,
            json_path, plot_path, markdown_path, cpu_smoke, from_json, no_progress):
    """Time RLA and RDN next to fla's gated delta rule and simple GLA and FlashAttention (SDPA).

    Forward and forward+backward at B*T tokens per call for each T, and one decode step after contexts of
    growing length. Needs a CUDA GPU, except with --cpu-smoke or --from-json.
    """
    from ..bench import plot

    if from_json:
        doc = json.loads(Path(from_json).read_text())
    else:
        doc = _measure(seq_lens, tokens, heads, head_dim, dtype, ops, modes, decode_contexts, decode_batch,
                       no_decode, cpu_smoke, no_progress, plot_path)
    if json_path and not from_json:
        Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")
    click.echo(plot.text_table(doc))
    if markdown_path == "-":
        click.echo("\n" + plot.markdown(doc))
    elif markdown_path:
        Path(markdown_path).write_text(plot.markdown(doc))
    if plot_path and _have_matplotlib():
        plot.save_plot(doc, plot_path)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _measure(seq_lens, tokens, heads, head_dim, dtype, ops, modes, decode_contexts, decode_batch, no_decode,
             cpu_smoke, no_progress, plot_path) -> dict:
    import torch

    from ..bench.kernels import DTYPES, MODES, SEQUENCE_OPS, Settings, results_document, run

    if not cpu_smoke and not torch.cuda.is_available():
        raise UserError("bench kernels needs a CUDA GPU and torch sees none; --cpu-smoke runs tiny shapes on "
                        "the CPU (tests the command only), --from-json re-renders saved results")
    smoke = cpu_smoke
    settings = Settings(
        seq_lens=_int_list(seq_lens or ("32,64" if smoke else GPU_SEQ_LENS), "--seq-lens"),
        tokens=tokens or (128 if smoke else 32768),
        heads=heads or (2 if smoke else 16),
        head_dim=head_dim or (32 if smoke else 128),
        dtype=dtype or ("fp32" if smoke else "bf16"),
        ops=_name_list(ops, "--ops", SEQUENCE_OPS),
        modes=_name_list(modes, "--modes", MODES),
        decode_contexts=[] if no_decode else _int_list(decode_contexts or ("32,128" if smoke else GPU_DECODE_CONTEXTS),
                                                       "--decode-contexts"),
        decode_batch=decode_batch or (2 if smoke else 8),
        cpu_smoke=smoke,
    )
    for option, value in (("--tokens", settings.tokens), ("--heads", settings.heads),
                          ("--head-dim", settings.head_dim), ("--decode-batch", settings.decode_batch)):
        if value < 1:
            raise UserError(f"{option} must be a positive integer; got {value}")
    assert settings.dtype in DTYPES
    if plot_path and not _have_matplotlib():
        # Warn before the run, not after: the results still go to --json and can be plotted elsewhere.
        click.echo("rla-convert: warning: matplotlib is not installed, no --plot; re-render later with "
                   "`rla-convert bench kernels --from-json RESULTS.json --plot OUT.png`", err=True)
    device = torch.device("cpu" if smoke else "cuda")
    points = run(settings, device, progress=not no_progress)
    return results_document(settings, points, device)


@bench.command(name="model", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def model(args):
    """Converted model against its teacher: prefill, decode, memory (not built yet: issue #6)."""
    not_built("bench model", 6)

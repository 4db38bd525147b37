"""`rla-convert bench kernels` (the ops side by side with fla and FlashAttention) and `bench model`."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ..errors import UserError

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
    """Benchmarks: kernels (the ops side by side), model (a converted model against its teacher)."""


@bench.command(name="kernels")
@click.option("--seq-lens", default=None, help=f"Sequence lengths T [default: {GPU_SEQ_LENS}; smoke: 32,64].")
@click.option("--tokens", type=int, default=None, help="Tokens per call, B*T [default: 32768; smoke: 128].")
@click.option("--heads", type=int, default=None, help="Heads H [default: 16; smoke: 2].")
@click.option("--head-dim", type=int, default=None, help="Head dim of q, k and v [default: 128; smoke: 32].")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="[default: bf16; smoke: fp32]")
@click.option("--ops", default="rla,rdn,rla_keep,rdn_keep,fla_gdn,fla_simple_gla,sdpa_flash", show_default=True,
              help="Ops to time (rla_keep, rdn_keep: rla, rdn with recompute_states=False; decode times those of rla, "
                   "rdn, fla_gdn, sdpa_flash).")
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
@click.option("--merge", "merge_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="With --from-json: a later run's --json whose points replace the saved ones at the same op, mode "
                   "and T (repeatable; --json writes the merged file, its command says where each point came from).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def kernels(seq_lens, tokens, heads, head_dim, dtype, ops, modes, decode_contexts, decode_batch, no_decode,
            json_path, plot_path, markdown_path, cpu_smoke, from_json, merge_paths, no_progress):
    """Time RLA and RDN next to fla's gated delta rule and simple GLA and FlashAttention (SDPA).

    Forward and forward+backward at B*T tokens per call for each T, and one decode step after contexts of
    growing length. Needs a CUDA GPU, except with --cpu-smoke or --from-json.
    """
    from ..bench import plot

    if merge_paths and not from_json:
        raise UserError("--merge adds a run's points to saved results: give those with --from-json BASE.json")
    if from_json:
        doc = _read_results(from_json, "--from-json")
        if merge_paths:
            from ..bench.kernels import check_results

            try:
                check_results(doc)
            except ValueError as err:
                raise UserError(f"--from-json {from_json}: {err}") from None
        for path in merge_paths:
            doc = _merged(doc, path)
    else:
        doc = _measure(seq_lens, tokens, heads, head_dim, dtype, ops, modes, decode_contexts, decode_batch,
                       no_decode, cpu_smoke, no_progress, plot_path)
    _write_outputs(doc, None if from_json and not merge_paths else json_path, markdown_path, plot_path,
                   plot.text_table, plot.markdown, plot.save_plot)


def _merged(doc: dict, path: str) -> dict:
    from ..bench.kernels import merge_results

    try:
        return merge_results(doc, _read_results(path, "--merge"), Path(path).name)
    except ValueError as err:
        raise UserError(f"--merge {path}: {err}") from None


def _read_results(path: str, option: str):
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:  # json's decode error
        raise UserError(f"{option} {path}: not JSON ({err}); give a file `bench kernels --json` wrote") from None


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
        tokens=_given(tokens, 128 if smoke else 32768),
        heads=_given(heads, 2 if smoke else 16),
        head_dim=_given(head_dim, 32 if smoke else 128),
        dtype=dtype or ("fp32" if smoke else "bf16"),
        ops=_name_list(ops, "--ops", SEQUENCE_OPS),
        modes=_name_list(modes, "--modes", MODES),
        decode_contexts=[] if no_decode else _int_list(decode_contexts or ("32,128" if smoke else GPU_DECODE_CONTEXTS),
                                                       "--decode-contexts"),
        decode_batch=_given(decode_batch, 2 if smoke else 8),
        cpu_smoke=smoke,
    )
    for option, value in (("--tokens", settings.tokens), ("--heads", settings.heads),
                          ("--head-dim", settings.head_dim), ("--decode-batch", settings.decode_batch)):
        if value < 1:
            raise UserError(f"{option} must be a positive integer; got {value}")
    short = [T for T in settings.seq_lens if settings.tokens < T]
    if short:
        raise UserError(f"--tokens {settings.tokens} is fewer than T={short[0]}: each call runs tokens // T sequences "
                        "of T tokens; give --tokens at least the longest --seq-lens")
    assert settings.dtype in DTYPES
    if plot_path and not _have_matplotlib():
        # Warn before the run, not after: the results still go to --json and can be plotted elsewhere.
        click.echo("rla-convert: warning: matplotlib is not installed, no --plot; re-render later with "
                   "`rla-convert bench kernels --from-json RESULTS.json --plot OUT.png`", err=True)
    device = torch.device("cpu" if smoke else "cuda")
    points = run(settings, device, progress=not no_progress)
    return results_document(settings, points, device)


MODEL_CONTEXTS = "1024,2048,4096,8192,16384,32768,65536"
MODEL_DECODE_CONTEXTS = "1024,4096,16384,32768,65536"
SMOKE = {"contexts": "32,64", "decode_contexts": "32,64", "batches": "1,2", "throughput_context": 32, "steps": 8}


@bench.command(name="model")
@click.argument("teacher")
@click.argument("converted")
@click.option("--contexts", default=None,
              help=f"Prefill context lengths [default: {MODEL_CONTEXTS}; smoke: {SMOKE['contexts']}]; "
                   "one the memory cannot hold is recorded as skipped.")
@click.option("--decode-contexts", default=None,
              help=f"Contexts before the timed decode steps, batch 1 [default: {MODEL_DECODE_CONTEXTS}; "
                   f"smoke: {SMOKE['decode_contexts']}].")
@click.option("--batches", default=None, help=f"Batch sizes for decoding throughput [default: 1,8,64; smoke: {SMOKE['batches']}].")
@click.option("--throughput-context", type=int, default=None,
              help=f"Context before the throughput steps [default: 4096; smoke: {SMOKE['throughput_context']}].")
@click.option("--steps", type=int, default=None, help="Timed decode steps per point (median) [default: 16; smoke: 8].")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="[default: bf16; smoke: fp32]")
@click.option("--compile-decode/--no-compile-decode", default=None,
              help="Also time decode (batch 1 at each decode context, each throughput batch) with compiled "
                   "steps, see --compile-mode [default: on for a GPU, off for "
                   "--cpu-smoke, where compiling takes longer than the run].")
@click.option("--compile-mode", type=click.Choice(["default", "reduce-overhead", "max-autotune-no-cudagraphs", "cuda-graph"]),
              default="default", show_default=True,
              help="torch.compile mode (reduce-overhead: its CUDA graphs), or cuda-graph: replay one captured "
                   "greedy step (static KV cache for softmax layers, states in place for converted ones).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write all results (and settings) here.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write a block for BENCHMARKS.md here ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Save a PNG: time and memory against context length, teacher and converted on the same axes.")
@click.option("--cpu-smoke", is_flag=True, help="Tiny contexts and batches on the CPU: runs in seconds, tests the command path.")
@click.option("--no-progress", is_flag=True, help="No progress bar: print one line per point as it is measured.")
def model(teacher, converted, contexts, decode_contexts, batches, throughput_context, steps, dtype, compile_decode,
          compile_mode, json_path, markdown_path, plot_path, cpu_smoke, no_progress):
    """A converted model against its teacher: prefill, decode per token, memory, batch throughput.

    TEACHER and CONVERTED are model names or paths as `rla-convert` takes them (a bundled name, a checkpoint
    directory, a .gguf file; CONVERTED is usually a directory written by `rla-convert MODEL --out DIR`).
    Both are loaded first (so a bad checkpoint fails before any timing), then measured one after the other.
    Needs a CUDA GPU, except with --cpu-smoke.
    """
    from ..bench import plot
    from ..bench.model import model_info, results_document

    settings = _model_settings(teacher, converted, contexts, decode_contexts, batches, throughput_context, steps,
                               dtype, compile_decode, compile_mode, cpu_smoke)
    device = _model_device(cpu_smoke)
    if plot_path and not _have_matplotlib():
        # Warn before the run, not after: the results still go to --json and can be plotted elsewhere.
        click.echo("rla-convert: warning: matplotlib is not installed, no --plot (pip install matplotlib)", err=True)
    models = _load_pair(teacher, converted, settings.dtype)
    infos = {role: model_info(m, name) for (role, m), name in zip(models.items(), (teacher, converted))}
    with _one_thread_if(cpu_smoke):
        points = _run_model_points(settings, models, device, no_progress)
    _write_outputs(results_document(settings, points, device, infos), json_path, markdown_path, plot_path,
                   plot.model_text_table, plot.model_markdown, plot.save_model_plot)


def _model_settings(teacher, converted, contexts, decode_contexts, batches, throughput_context, steps, dtype,
                    compile_decode, compile_mode, smoke):
    from ..bench.model import Settings

    settings = Settings(
        teacher=teacher, converted=converted,
        contexts=_int_list(contexts or (SMOKE["contexts"] if smoke else MODEL_CONTEXTS), "--contexts"),
        decode_contexts=_int_list(decode_contexts or (SMOKE["decode_contexts"] if smoke else MODEL_DECODE_CONTEXTS),
                                  "--decode-contexts"),
        batches=_int_list(batches or (SMOKE["batches"] if smoke else "1,8,64"), "--batches"),
        throughput_context=_given(throughput_context, SMOKE["throughput_context"] if smoke else 4096),
        steps=_given(steps, SMOKE["steps"] if smoke else 16),
        dtype=dtype or ("fp32" if smoke else "bf16"),
        compile_decode=(not smoke) if compile_decode is None else compile_decode,
        compile_mode=compile_mode, cpu_smoke=smoke)
    for option, value in (("--throughput-context", settings.throughput_context), ("--steps", settings.steps)):
        if value < 1:
            raise UserError(f"{option} must be a positive integer; got {value}")
    return settings


def _given(value, default):
    """An option's value when given (0 included, refused afterwards as such), else its default."""
    return default if value is None else value


def _model_device(cpu_smoke: bool):
    import torch

    if cpu_smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("bench model needs a CUDA GPU and torch sees none; --cpu-smoke runs tiny contexts on the "
                        "CPU (tests the command only)")
    return torch.device("cuda")


def _load_pair(teacher: str, converted: str, dtype: str) -> dict:
    """{"teacher": model, "converted": model}, both on the CPU; bad paths and bad checkpoints fail first."""
    from ..checkpoints import resolve_checkpoint

    for name in (teacher, converted):  # a mistyped path fails at once, before seconds of loading the other
        resolve_checkpoint(name)
    # The converted checkpoint loads first: it is the one more likely to fail (an edited config).
    converted_model = _load_for_bench(converted, dtype)
    return {"teacher": _load_for_bench(teacher, dtype), "converted": converted_model}  # measured in this order


def _load_for_bench(name: str, dtype: str):
    """Load on the CPU in the benchmark's dtype; any failure is one line naming the checkpoint."""
    from ..bench.model import DTYPES
    from ..checkpoints import load_checkpoint, resolve_checkpoint

    try:
        model, _ = load_checkpoint(name, dtype=DTYPES[dtype], with_tokenizer=False)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 -- an edited config can fail in any layer constructor
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UserError(f"could not load {name!r} ({resolve_checkpoint(name).directory}): "
                        f"{type(err).__name__}: {first}") from None
    return model.eval()


@contextlib.contextmanager
def _one_thread_if(smoke: bool):
    """One intra-op thread for the smoke run: on tiny shapes more threads only synchronise, and on a busy
    machine their spin-waits turned a 2 ms forward into 400 ms (measured here on 2 cores)."""
    import torch

    before = torch.get_num_threads()
    if smoke:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_model_points(settings, models, device, no_progress):
    from ..bench.model import point_line, run_model_bench

    report = (lambda p: click.echo(point_line(p))) if no_progress else None
    return run_model_bench(models, device, settings.contexts, settings.decode_contexts, 1, settings.batches,
                           settings.throughput_context, progress=not no_progress,
                           compile_decode=settings.compile_decode, compile_mode=settings.compile_mode,
                           steps=settings.steps, report=report)


def _write_outputs(doc, json_path, markdown_path, plot_path, text_table, markdown, save_plot):
    """The terminal table, then JSON, markdown ("-": the terminal) and PNG where asked; both bench commands."""
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")
    click.echo(text_table(doc))
    if markdown_path == "-":
        click.echo("\n" + markdown(doc))
    elif markdown_path:
        Path(markdown_path).write_text(markdown(doc))
    if plot_path and _have_matplotlib():
        save_plot(doc, plot_path)

"""Which Triton kernels a process compiled, and compiling them again all at once.

A cold process compiles each kernel specialisation (and each autotune config) when it first launches it, one after
another, on one core: on the GPU machine a cold call spent minutes of its device time there (BENCHMARKS.md: float64
checks and gpu tests cut by their limits while compiling). Triton compiles several at once on threads (most of the
work releases the GIL: 12 of RDN's sm_90 kernels in 9.6 s on one thread, 5.2 s on two, this 2-core machine,
2026-12-05), and its file cache (TRITON_CACHE_DIR, ~/.triton/cache) serves any later process that compiles the same.

- ``RLA_KERNELS_COMPILE_LOG=FILE`` (read when ``rla_kernels`` is imported): every kernel the process compiles (ours,
  and any other library's, fla's too) is appended to FILE as one JSON line: ``{"module", "name", "data"}``, data
  being Triton's own specialisation data (``JITFunction.preload``'s input: signature, constexprs, attributes,
  compile options).
- ``warm(records, threads)``: compiles every record at once on a thread pool (Triton's AsyncCompileMode and
  ``preload``: the JIT's own compile path, so the same cache keys as a launch's), into Triton's file cache;
  ``scripts/warm_kernels.py`` runs it from the command line, and its ``--record`` writes a log without a GPU.

A record names where its kernel lives, not its source: replayed after the kernel changed, it compiles the new source
at the old specialisation (what the next launch will most likely ask for); one whose kernel is gone or no longer
binds is reported and skipped.
"""
from __future__ import annotations

import importlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

ENV = "RLA_KERNELS_COMPILE_LOG"
# Options that name this machine's files: a record made elsewhere must not carry them (preload's parse_options fills
# in the local ones, which is what the JIT's own options hold here).
_MACHINE_OPTIONS = ("extern_libs",)
_lock = threading.Lock()


def record_line(module: str, name: str, data: str) -> str:
    """One log line: the kernel's Python module and qualified name, and Triton's specialisation data (a JSON text)."""
    return json.dumps({"module": module, "name": name, "data": data})


def install(path: str) -> None:
    """Append every kernel this process compiles to ``path`` (``ENV``'s meaning); an earlier jit_cache_hook still
    runs, and its answer (True: skip the compile) still counts."""
    from triton import knobs

    previous = knobs.runtime.jit_cache_hook

    def log_compile(*, fn, compile, **kwargs):
        line = record_line(fn.module, fn.name, compile["specialization_data"])
        with _lock, open(path, "a") as f:
            f.write(line + "\n")
        return previous(fn=fn, compile=compile, **kwargs) if previous else False

    knobs.runtime.jit_cache_hook = log_compile


def install_from_env() -> None:
    path = os.environ.get(ENV)
    if path:
        install(path)


def read(paths, modules=()) -> list[dict]:
    """The records of the logs at ``paths``, each once (the first of equal ones), in order; with ``modules``, only
    those whose module starts with one of these prefixes (a call timing one op warms that op's kernels alone)."""
    seen, records = set(), []
    for path in paths:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = (record["module"], record["name"], _specialisation(record["data"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{number}: not a compile record ({e}); each line is "
                                     f'{{"module": ..., "name": ..., "data": ...}}') from None
                if key not in seen and (not modules or record["module"].startswith(tuple(modules))):
                    seen.add(key)
                    records.append(record)
    return records


def _specialisation(data: str) -> str:
    """The data without the JIT's in-memory key (which preload only files the kernel under) and the recording
    machine's files (``portable``), canonical: two records of one compile compare equal, from this machine's log or
    from one recorded elsewhere."""
    obj = _without_machine_options(data)
    obj.pop("key", None)
    return json.dumps(obj, sort_keys=True)


def jit_function(module: str, name: str):
    """The JITFunction ``name`` of ``module``, through the autotuners and heuristics wrapped around it."""
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    while not hasattr(obj, "preload") and hasattr(obj, "fn"):
        obj = obj.fn
    if not hasattr(obj, "preload"):
        raise TypeError(f"{module}.{name} is not a Triton kernel")
    return obj


def portable(data: str) -> str:
    """Specialisation data without the options that name files of the machine it was recorded on."""
    return json.dumps(_without_machine_options(data))


def _without_machine_options(data: str) -> dict:
    obj = json.loads(data)
    obj["options"] = {k: v for k, v in obj["options"].items() if k not in _MACHINE_OPTIONS}
    return obj


def warm(records: list[dict], threads: int | None = None) -> tuple[int, list[str]]:
    """Compile every record at once on ``threads`` threads (default: every core) into Triton's file cache (and this
    process's JIT caches). Returns the number compiled (or found in the cache) and one line per record skipped."""
    from triton.runtime._async_compile import AsyncCompileMode

    skipped, futures = [], []
    threads = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        with AsyncCompileMode(pool, ignore_errors=True):
            for record in records:
                where = f"{record['module']}.{record['name']}"
                try:
                    kernel = jit_function(record["module"], record["name"])
                    futures.append((where, kernel.preload(portable(record["data"]))))
                except Exception as e:  # a kernel gone, renamed or re-signed since the record: skip it
                    skipped.append(_skip_line(where, e))
    done = 0
    for where, future in futures:
        try:
            (future.result() if hasattr(future, "result") else future)
            done += 1
        except Exception as e:
            skipped.append(_skip_line(where, e))
    return done, skipped


def _skip_line(where: str, error: Exception) -> str:
    """One line for a record that did not compile. A compile error is a chain (each call site's source around it)
    whose innermost error says what was wrong: its message's last line."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = getattr(root, "error_message", None) or str(root)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    reason = f"{type(root).__name__}: {lines[-1][:200]}" if lines else type(root).__name__
    return f"{where}: {reason}"

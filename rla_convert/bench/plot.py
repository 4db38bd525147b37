"""Rendering of kernel benchmark results: a text table, markdown for BENCHMARKS.md, and a PNG.

Everything here reads the results document of ``kernels.results_document`` (the same dict that
``--json`` writes), so saved results can be re-rendered on another machine with ``--from-json``.
"""
from __future__ import annotations

LABELS = {"rla": "RLA (ours)", "rdn": "RDN (ours)", "rla_keep": "RLA, walk kept (ours)",
          "rdn_keep": "RDN, walk kept (ours)", "fla_gdn": "fla GDN", "fla_simple_gla": "fla simple GLA",
          "sdpa_flash": "SDPA flash"}
DECODE_LABELS = {**LABELS, "sdpa_flash": "SDPA flash (KV cache)"}
# One colour an op in every panel and every saved plot, whatever order the points came in (merged result files
# list them in the order they were measured).
COLORS = {"rla": "tab:red", "rdn": "tab:purple", "rla_keep": "tab:pink", "rdn_keep": "tab:brown",
          "fla_gdn": "tab:blue", "fla_simple_gla": "tab:orange", "sdpa_flash": "tab:green"}


class _Footnotes:
    """Numbers each distinct error or note once, so cells stay short and the reasons are listed below."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _cell(point: dict, notes: _Footnotes, decode: bool) -> str:
    if point["error"]:
        return "failed" + notes.mark(point["error"])
    text = f"{point['ms']:.4f}" if decode else f"{point['ms']:.2f}"
    if decode and point.get("state_mb") is not None:
        mb = point["state_mb"]
        text += f" ({mb:.1f} MB)" if mb >= 1 else f" ({mb * 1024:.1f} KB)"
    if point.get("note"):
        text += notes.mark(point["note"])
    return text


def _grids(doc: dict):
    """(sequence header, rows), (decode header, rows), footnotes: the tables shared by text and markdown."""
    notes = _Footnotes()
    seq = [p for p in doc["points"] if p["mode"] != "decode"]
    columns = list(dict.fromkeys((p["op"], p["mode"]) for p in seq))
    seq_header = ["T", "B"] + [f"{LABELS.get(op, op)} {mode}" for op, mode in columns]
    seq_rows = []
    for T in sorted({p["seq_len"] for p in seq}):
        at_T = {(p["op"], p["mode"]): p for p in seq if p["seq_len"] == T}
        batch = next(iter(at_T.values()))["batch"]
        seq_rows.append([str(T), str(batch)] + [_cell(at_T[c], notes, False) if c in at_T else "" for c in columns])

    dec = [p for p in doc["points"] if p["mode"] == "decode"]
    ops = list(dict.fromkeys(p["op"] for p in dec))
    dec_header = ["context", "B"] + [DECODE_LABELS.get(op, op) for op in ops]
    dec_rows = []
    for L in sorted({p["seq_len"] for p in dec}):
        at_L = {p["op"]: p for p in dec if p["seq_len"] == L}
        batch = next(iter(at_L.values()))["batch"]
        dec_rows.append([str(L), str(batch)] + [_cell(at_L[op], notes, True) if op in at_L else "" for op in ops])
    return (seq_header, seq_rows), (dec_header, dec_rows), notes.texts


def _title(doc: dict) -> str:
    meta, s = doc["meta"], doc["meta"]["settings"]
    return (f"{meta['device']}, {s['dtype']}, H={s['heads']}, head dim {s['head_dim']}, "
            f"{s['tokens']} tokens per call (B*T)")


def text_table(doc: dict) -> str:
    (sh, sr), (dh, dr), notes = _grids(doc)
    out = [f"kernel benchmark: {_title(doc)}; median ms"]

    def aligned(header, rows):
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]

    if sr:
        out += aligned(sh, sr)
    if dr:
        out += ["", "decode: one token per sequence after `context` tokens; median ms, CUDA-graph replay on a GPU "
                "(state or KV cache size)"]
        out += aligned(dh, dr)
    out += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    return "\n".join(out)


def markdown(doc: dict) -> str:
    (sh, sr), (dh, dr), notes = _grids(doc)
    meta = doc["meta"]
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "triton", "fla") if meta.get(k))
    out = [f"### Kernels: {_title(doc)}", "",
           f"`{meta['command']}` -- {meta['device']}, {versions}, {meta['date']}. Median ms.", ""]

    def table(header, rows):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]

    if sr:
        out += table(sh, sr)
    if dr:
        out += ["", "Decode, one token per sequence after `context` tokens: median ms of a CUDA-graph replay (the "
                "eager time, with Python launch overhead, is in the JSON), and the state or KV cache size.", ""]
        out += table(dh, dr)
    if notes:
        out += [""] + [f"[{i}] {text}  " for i, text in enumerate(notes, 1)]
    return "\n".join(out) + "\n"


def save_plot(doc: dict, path: str) -> None:
    """Time against T, one line per op: forward and forward+backward panels, plus decode against context."""
    import matplotlib.pyplot as plt

    fig = kernel_figure(doc)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def kernel_figure(doc: dict):
    """The figure ``save_plot`` writes (open: the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in doc["points"] if p["ms"] is not None]
    panels = [(m, f"{m}, B*T = {doc['meta']['settings']['tokens']}", "T (tokens per sequence)") for m in ("fwd", "fwd+bwd")
              if any(p["mode"] == m for p in doc["points"])]
    if any(p["mode"] == "decode" for p in doc["points"]):
        panels.append(("decode", "decode, one token per sequence", "context length"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (mode, title, xlabel) in zip(axes[0], panels):
        labels = DECODE_LABELS if mode == "decode" else LABELS
        for op in dict.fromkeys(p["op"] for p in doc["points"] if p["mode"] == mode):
            line = sorted((p["seq_len"], p["ms"]) for p in ok if p["mode"] == mode and p["op"] == op)
            if line:
                style = "-o" if op in ("rla", "rdn", "rla_keep", "rdn_keep") else "--s"
                ax.plot([x for x, _ in line], [y for _, y in line], style, label=labels.get(op, op), markersize=4,
                        color=COLORS.get(op))
        xs = sorted({p["seq_len"] for p in doc["points"] if p["mode"] == mode})
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median ms")
        top = max((p["ms"] for p in ok if p["mode"] == mode), default=1.0)
        ax.set_ylim(0, 1.1 * top)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(doc), fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ model bench
# The same three renderings for `bench model`, reading ``bench.model.results_document``.

ROLES = ("teacher", "converted")


def _role_label(doc: dict, role: str) -> str:
    info = doc["meta"].get("models", {}).get(role, {})
    return f"{role} ({info['variant']})" if info.get("variant") else role


def _model_points(doc: dict, measure: str, key: str) -> dict:
    """(role, row key) -> point, for one measure; the row key is the context or the batch size."""
    return {(p["model"], p[key]): p for p in doc["points"] if p["measure"] == measure}


def _model_cell(point: dict | None, field: str, fmt: str, notes: _Footnotes) -> str:
    if point is None:
        return ""
    if point["error"]:
        word = "skipped" if point["error"].startswith("skipped") or point["error"] == "out of memory" else "failed"
        return word + notes.mark(point["error"])
    value = point.get(field)
    if value is None:
        return "-"
    # The note goes on the timing cell only: the same mark on every column of a row would be noise.
    return format(value, fmt) + (notes.mark(point["note"]) if point.get("note") and field in ("ms", "tokens_per_s") else "")


def _has(doc: dict, measure: str, field: str) -> bool:
    return any(p.get(field) is not None for p in doc["points"] if p["measure"] == measure)


def _ratio(a: dict | None, b: dict | None, field: str, higher_is_better: bool) -> str:
    if not a or not b or a.get(field) is None or b.get(field) is None or not b[field] or not a[field]:
        return ""
    return f"{(b[field] / a[field]) if higher_is_better else (a[field] / b[field]):.2f}x"


def _model_table(doc, measure, key, key_header, columns, notes, ratio_field=None, higher_is_better=False):
    """Rows by `key` (context or batch): for each column spec (header, role, measure, field, fmt) one cell."""
    by = {m: _model_points(doc, m, key) for m in {c[2] for c in columns} | {measure}}
    keys = sorted({k for (_, k) in by[measure]})
    header = [key_header] + [c[0] for c in columns] + (["converted speed-up"] if ratio_field else [])
    rows = []
    for k in keys:
        row = [str(k)] + [_model_cell(by[m].get((role, k)), f, fmt, notes) for _, role, m, f, fmt in columns]
        if ratio_field:
            pair = [by[measure].get((role, k)) for role in ROLES]
            row.append(_ratio(*[p if p and not p["error"] else None for p in pair], ratio_field, higher_is_better))
        rows.append(row)
    return header, rows


def _peak_columns(doc, measure):
    if not _has(doc, measure, "peak_mb"):
        return []  # the CPU has no peak-memory counter: leave the columns out rather than fill them with '-'
    return [(f"{_role_label(doc, r)} peak MB", r, measure, "peak_mb", ".0f") for r in ROLES]


def _model_grids(doc: dict):
    """[(title, header, rows)], footnotes: the tables shared by the text and markdown renderings."""
    notes, s, out = _Footnotes(), doc["meta"]["settings"], []
    label = lambda r: _role_label(doc, r)  # noqa: E731
    cols = [(f"{label(r)} ms", r, "prefill", "ms", ".2f") for r in ROLES] + _peak_columns(doc, "prefill")
    out.append(("prefill, batch 1: median ms per call (one forward over the context, cache filled); peak: device "
                "memory during it",
                *_model_table(doc, "prefill", "context", "context", cols, notes, "ms")))
    cols = [(f"{label(r)} ms/token", r, "decode", "ms", ".3f") for r in ROLES]
    if any(p["measure"] == "decode_compiled" for p in doc["points"]):
        cols += [(f"{label(r)} compiled", r, "decode_compiled", "ms", ".3f") for r in ROLES]
    cols += [(f"{label(r)} cache MB", r, "decode", "cache_mb", ".3f") for r in ROLES] + _peak_columns(doc, "decode")
    out.append((f"decode after `context` tokens, batch {_decode_batch(doc)}: median ms per generated token "
                f"(compiled: {_compiled_how(doc)}); cache: KV cache or recurrent state after the prefill; peak: device "
                f"memory while decoding (weights, cache, a step's work)",
                *_model_table(doc, "decode", "context", "context", cols, notes, "ms")))
    cols = [(f"{label(r)} tokens/s", r, "throughput", "tokens_per_s", ".1f") for r in ROLES]
    if any(p["measure"] == "throughput_compiled" for p in doc["points"]):
        cols += [(f"{label(r)} compiled", r, "throughput_compiled", "tokens_per_s", ".1f") for r in ROLES]
    cols += _peak_columns(doc, "throughput")
    out.append((f"batch decoding throughput after {s['throughput_context']} tokens: generated tokens per second",
                *_model_table(doc, "throughput", "batch", "batch", cols, notes, "tokens_per_s", True)))
    return [t for t in out if t[2]], notes.texts


def _compiled_how(doc: dict) -> str:
    mode = doc["meta"]["settings"].get("compile_mode", "default")
    if mode == "cuda-graph":
        return "each greedy step one replay of a captured CUDA graph, the teacher on a static KV cache"
    return f"steps through torch.compile, mode {mode}"


def _decode_batch(doc: dict) -> int:
    return next((p["batch"] for p in doc["points"] if p["measure"] == "decode"), 1)


def _model_title(doc: dict) -> str:
    meta, models = doc["meta"], doc["meta"].get("models", {})
    names = " vs ".join(f"{models.get(r, {}).get('name', r)}" for r in ROLES)
    return f"{names}: {meta['device']}, {meta['settings']['dtype']}"


def model_text_table(doc: dict) -> str:
    grids, notes = _model_grids(doc)
    out = [f"model benchmark: {_model_title(doc)}"]
    for title, header, rows in grids:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out += ["", title] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    out += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    return "\n".join(out)


def model_markdown(doc: dict) -> str:
    """A block for BENCHMARKS.md: the command, device, versions and date, then one table per measure."""
    grids, notes = _model_grids(doc)
    meta = doc["meta"]
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "transformers", "triton", "sdpa") if meta.get(k))
    out = [f"### Model: {_model_title(doc)}", "", f"`{meta['command']}` -- {meta['device']}, {versions}, {meta['date']}."]
    for title, header, rows in grids:
        out += ["", title[0].upper() + title[1:] + ".", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        out += [""] + [f"[{i}] {text}  " for i, text in enumerate(notes, 1)]
    return "\n".join(out) + "\n"


def save_model_plot(doc: dict, path: str) -> None:
    """Teacher and converted on the same axes: prefill time, decode time and memory against context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("prefill", "ms", "prefill (batch 1), median ms"), ("decode", "ms", "decode, ms per token"),
              ("decode", "cache_mb", "KV cache / state after the prefill, MB")]
    if _has(doc, "decode", "peak_mb"):  # a GPU run: peak device memory too (weights included)
        panels.append(("decode", "peak_mb", "decode: peak device memory, MB"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (measure, field, title) in zip(axes[0], panels):
        lines = [(measure, role, style, _role_label(doc, role)) for role, style in zip(ROLES, ("--s", "-o"))]
        if measure == "decode" and field == "ms":  # compiled steps beside eager ones, same colours, dotted
            lines += [("decode_compiled", role, style, f"{_role_label(doc, role)} compiled")
                      for role, style in zip(ROLES, (":s", ":o"))]
        for i, (m, role, style, label) in enumerate(lines):
            line = sorted((p["context"], p[field]) for p in doc["points"]
                          if p["measure"] == m and p["model"] == role and p.get(field) is not None)
            if line:
                ax.plot([x for x, _ in line], [y for _, y in line], style, color=f"C{i % 2}", label=label, markersize=4)
        _context_axis(ax, sorted({p["context"] for p in doc["points"] if p["measure"] == measure}))
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(_model_title(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _context_axis(ax, xs: list[int]) -> None:
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs, [f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.grid(True, alpha=0.3)

"""Rendering of kernel benchmark results: a text table, markdown for BENCHMARKS.md, and a PNG.

Everything here reads the results document of ``kernels.results_document`` (the same dict that
``--json`` writes), so saved results can be re-rendered on another machine with ``--from-json``.
"""
from __future__ import annotations

LABELS = {"rla": "RLA (ours)", "rdn": "RDN (ours)", "fla_gdn": "fla GDN", "fla_simple_gla": "fla simple GLA",
          "sdpa_flash": "SDPA flash"}
DECODE_LABELS = {**LABELS, "sdpa_flash": "SDPA flash (KV cache)"}


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
                style = "-o" if op in ("rla", "rdn") else "--s"
                ax.plot([x for x, _ in line], [y for _, y in line], style, label=labels.get(op, op), markersize=4)
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
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Read what `bash scripts/gpu_session.sh ncu` brings back (ncu_source_sass.csv: every profiled kernel's SASS with its
Nsight Compute counters) and say, a kernel at a time, where its warps wait.

    python3 scripts/ncu_summary.py DIR/ncu_source_sass.csv [--kernel N] [--top 12] [--around ADDR_INDEX]

For each kernel (result N of the report): executed warp instructions and their opcode mix, the warp-stall reasons
over all samples, the stall samples by opcode, the hottest loop's instruction census (the instructions executed most
often: a walk's step), and the instructions with the most stall samples, each with its two main reasons. A stall is
charged to the instruction the warp waits to issue, so read the producers above it: ``--around I`` prints the 40
instructions before index I. What taught us to read it (2026-12-04): a walk's time is its step's instruction count
times ~7 cycles at two warps a scheduler, and long_sb on a consumer is a load issued too late (or a register still
owed to a store or cp.async's address).
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import re
import sys


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(2)


def results(path):
    """(index, kernel name, rows) for each ``### result N`` block of the file."""
    text = open(path).read()
    parts = re.split(r"### result (\d+)\n", text)[1:]
    for i in range(0, len(parts), 2):
        lines = parts[i + 1].splitlines()
        if len(lines) < 2 or not lines[0].startswith('"Kernel Name"'):
            continue
        name = lines[0].split(",")[1].strip('"')
        yield int(parts[i]), name, list(csv.DictReader(io.StringIO("\n".join(lines[1:]))))


def count(row, column):
    value = row.get(column, "").replace(",", "")
    return int(value) if value.isdigit() else 0


def opcode(row, full=False):
    words = row["Source"].split()
    if not words:
        return "?"
    op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return op if full else op.split(".")[0]


def summarise(index, name, rows, top):
    stall_cols = [c for c in rows[0] if c.startswith("stall_") and "Not Issued" not in c]
    executed = collections.Counter()
    stalls, by_op = collections.Counter(), collections.Counter()
    for r in rows:
        executed[opcode(r)] += count(r, "Instructions Executed")
        by_op[opcode(r)] += count(r, "Warp Stall Sampling (All Samples)")
        for c in stall_cols:
            stalls[c[6:]] += count(r, c)
    total, samples = sum(executed.values()) or 1, sum(by_op.values()) or 1
    print(f"== result {index}: {name}: {total / 1e6:.1f}M warp instructions, {samples} stall samples")
    print("   opcodes: " + ", ".join(f"{k} {v / total:.1%}" for k, v in executed.most_common(12)))
    print("   stalls:  " + ", ".join(f"{k} {v / samples:.1%}" for k, v in stalls.most_common(8)))
    print("   stall samples by opcode: " + ", ".join(f"{k} {v / samples:.1%}" for k, v in by_op.most_common(8)))
    per_count = collections.Counter(count(r, "Instructions Executed") for r in rows)
    hot = max(per_count, key=lambda c: c * per_count[c])
    body = collections.Counter(opcode(r, full=True) for r in rows if count(r, "Instructions Executed") == hot)
    print(f"   hottest loop: {sum(body.values())} instructions executed {hot} times each: "
          + ", ".join(f"{k} {v}" for k, v in body.most_common(10)))
    ranked = sorted(range(len(rows)), key=lambda i: -count(rows[i], "Warp Stall Sampling (All Samples)"))[:top]
    for i in ranked:
        r = rows[i]
        reasons = sorted(((count(r, c), c[6:]) for c in stall_cols), reverse=True)[:2]
        share = count(r, "Warp Stall Sampling (All Samples)") / samples
        why = ", ".join(f"{reason} {n}" for n, reason in reasons if n)
        print(f"   {i:5d} {share:6.2%}  {r['Source'].strip()[:64]:66s}  {why}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv", help="ncu_source_sass.csv from `bash scripts/gpu_session.sh ncu`")
    parser.add_argument("--kernel", type=int, help="only result N")
    parser.add_argument("--top", type=int, default=12, help="instructions listed by stall samples")
    parser.add_argument("--around", type=int, help="with --kernel: the 40 instructions up to this index")
    args = parser.parse_args()
    if args.around is not None and args.kernel is None:
        fail("--around needs --kernel N (an index is a kernel's own)")
    try:
        found = [r for r in results(args.csv) if args.kernel is None or r[0] == args.kernel]
    except OSError as err:
        fail(f"cannot read {args.csv}: {err.strerror}")
    if not found:
        fail(f"no kernel {'result ' + str(args.kernel) + ' ' if args.kernel is not None else ''}in {args.csv}: "
                 "give the ncu_source_sass.csv that `bash scripts/gpu_session.sh ncu` writes")
    for index, name, rows in found:
        if args.around is not None:
            for i in range(max(0, args.around - 40), min(len(rows), args.around + 1)):
                r = rows[i]
                print(f"{i:5d} {count(r, 'Warp Stall Sampling (All Samples)'):7d} "
                      f"{count(r, 'Instructions Executed'):9d}  {r['Source'].strip()}")
        else:
            summarise(index, name, rows, args.top)


if __name__ == "__main__":
    main()

"""``async_dot_hazards``: shared-memory slots that a pipelined Triton loop refills, and registers it redefines, while
an asynchronous warpgroup MMA may still read them, read from a kernel's TTGIR (scripts/kernel_resources.py --hazards
prints them for every kernel and config). Pure text: importing it has no side effects, so tests load it directly."""
import re

_ALLOC = re.compile(r"^\s*(%[\w.]+) = ttg\.local_alloc\b.*-> !ttg\.memdesc<(\d+)x")
_VIEW = re.compile(r"^\s*(%[\w.]+) = ttg\.memdesc_(\w+) (%[\w.]+)(?:\[(%[\w.]+)\])?")
_ASYNC_DOT = re.compile(r"^\s*%[\w.#:0-9]+ = ttng\.warp_group_dot (%[\w.]+), (%[\w.]+), .*isAsync = true")
_DOT_WAIT = re.compile(r"ttng\.warp_group_dot_wait .*pendings = (\d+)")
_REGISTER_A = re.compile(r"isAsync = true\} : tensor<")  # the left operand in registers (an "RS" wgmma)
_DEFINES = re.compile(r"^\s*(%[\w.]+)(?::\d+)? = ")
_SHARED_WRITE = re.compile(r"ttg\.(?:async_copy_global_to_local %[\w.]+, |local_store %[\w.]+, )(%[\w.]+)")


def async_dot_hazards(ttgir: str) -> list[str]:
    """Shared-memory writes that may land while an asynchronous warpgroup MMA (wgmma) still reads the same buffer: a
    ``ttng.warp_group_dot {isAsync}`` reads a slot of a ``ttg.local_alloc`` and an async copy or a local store into
    the same slot follows before a ``warp_group_dot_wait {pendings = 0}``. The same slot: the alloc has one, or both
    views index it by the same value (a pipeliner's rotating slots are trusted to differ). Each loop body is scanned
    twice, so that a write early in an iteration after a dot late in the one before counts too. Why: Triton 3.6 and
    3.9 pipeline RDN's gradient kernel at 2 stages this way (its state tiles, read by dots and by an elementwise sum,
    get one slot, refilled for the next V-block while the dots still read it): its dk and dg changed from run to run
    on the H200 (2026-12-04). Also a dot whose left operand is in registers, still pending when the next iteration
    redefines that operand (PTX leaves touching a pending wgmma's A registers before its wgmma.wait_group undefined;
    Triton 3.6 adds such waits only to loops without a full wait, WGMMAPipeline.cpp: a variant of that kernel with its
    state tiles as register operands reloaded them at the loop top under the last turn's HGMMAs, 2026-12-04).
    Returns one line per hazard (the alloc or register operand, and the dot that reads it), empty when none."""
    lines = [line.split(" loc(")[0] for line in ttgir.splitlines()]
    slots, view = {}, {}  # alloc -> its slot count; a view -> (its alloc, the slot index's SSA name or None)
    for line in lines:
        if m := _ALLOC.match(line):
            slots[m.group(1)] = int(m.group(2))
            view[m.group(1)] = (m.group(1), None)
        elif (m := _VIEW.match(line)) and m.group(3) in view:
            alloc, index = view[m.group(3)]
            view[m.group(1)] = (alloc, m.group(4) if m.group(2) == "index" else index)
    bodies, stack = [], []
    for i, line in enumerate(lines):
        indent = line[:len(line) - len(line.lstrip())]
        if "scf.for" in line and line.rstrip().endswith("{"):
            stack.append((i, indent))
        elif line.strip() == "}" and stack and stack[-1][1] == indent:
            bodies.append(lines[stack.pop()[0] + 1:i])
    found = []
    for body in [lines] + [b + b for b in bodies]:
        pending, registers = [], {}  # (alloc, slot index, the dot's line); a register operand -> the dot's line
        for line in body:
            if (m := _DEFINES.match(line)) and m.group(1) in registers:
                hazard = f"{m.group(1)} (registers) redefined while read by: {registers[m.group(1)]}"
                if hazard not in found:
                    found.append(hazard)
            if m := _ASYNC_DOT.match(line):
                pending += [(*view[op], line.strip()[:100]) for op in m.groups() if op in view]
                if _REGISTER_A.search(line):
                    registers[m.group(1)] = line.strip()[:100]
            elif (m := _DOT_WAIT.search(line)) and m.group(1) == "0":
                pending, registers = [], {}
            elif (m := _SHARED_WRITE.search(line)) and m.group(1) in view:
                alloc, index = view[m.group(1)]
                for read_alloc, read_index, dot in pending:
                    if read_alloc == alloc and (slots.get(alloc) == 1 or read_index == index):
                        hazard = f"{alloc} ({slots.get(alloc)} slot(s)) written while read by: {dot}"
                        if hazard not in found:
                            found.append(hazard)
    return found

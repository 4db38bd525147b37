"""scripts/kernel_resources.py, the offline register/spill report: it leans on Triton internals (the launch
binder, ``_pack_args``), so a Triton upgrade that moves them should fail here, not in a device session."""
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "kernel_resources.py")
ROW = re.compile(r"^(_\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\{.*\})$")


@pytest.mark.slow
def test_reports_every_config_of_the_rdn_wy_kernels_specialised_as_launches():
    # Both switches are set for the interpreter tests (the second by test_rla_chunk_triton.py at collection).
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    out = subprocess.run([sys.executable, SCRIPT, "--ops", "rdn", "--shape", "1,64,2,32", "--kernels", "wy,prep"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [m.groups() for m in map(ROW.match, out.stdout.splitlines()) if m]
    # The forward (32-token chunks) compiles every config of the WY autotuner, (1, 1), (2, 1), (4, 1), (8, 1); the
    # backward takes its matrices and compiles only the walk-operator kernels', (2, 1), (4, 1), (1, 1) for Kb, Kc and
    # (2, 1) capped at 200 registers, (2, 1), (2, 1) capped at 168, (4, 1), (8, 1) for Pb, Qb, Pc.
    assert sorted((r[0], int(r[1]), int(r[2]), "maxnreg" in r[6]) for r in rows) == sorted(
        [("_rdn_wy_kernel", w, 1, False) for w in (1, 2, 4, 8)]
        + [("_rdn_bwd_prep_k_kernel", w, 1, False) for w in (2, 4, 1)]
        + [("_rdn_bwd_prep_p_kernel", w, 1, cap)
           for w, cap in ((2, True), (2, False), (2, True), (4, False), (8, False))])
    for name, warps, stages, regs, stack, shared, constexprs in rows:
        assert 0 < int(regs) <= 255 and int(shared) > 0
        assert "'K': 32" in constexprs and "'H': 2" in constexprs and "'BT': 32" in constexprs
    # The walk operators are the prep kernels' alone: the WY kernel has no switch for them (a backward without the
    # forward's matrices launches both kernels).
    assert not any("MQI" in r[6] for r in rows)


CENSUS = re.compile(r"^\s+SASS: (.*)  all (\d+)$")


@pytest.mark.slow
def test_census_counts_each_kernels_sass_instructions_by_kind():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    out = subprocess.run([sys.executable, SCRIPT, "--ops", "rdn", "--shape", "1,64,2,32", "--kernels", "_rdn_wy",
                          "--census"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    rows = [i for i, line in enumerate(lines) if ROW.match(line)]
    assert len(rows) == 4  # the WY autotuner's four configs, each followed by its census
    for i in rows:
        m = CENSUS.match(lines[i + 1])
        assert m, lines[i + 1]
        counts = {kind: int(n) for kind, n in (part.rsplit(" ", 1) for part in m.group(1).split("  "))}
        assert list(counts) == ["HMMA", "HGMMA", "LDS", "STS", "BAR", "SHFL", "LDG", "STG", "LDL", "STL", "F2FP"]
        # its k k^T and the 16 x 16 merges run on tensor cores; it loads k and stores its matrices
        assert counts["HMMA"] + counts["HGMMA"] > 0 and counts["LDG"] > 0 and counts["STG"] > 0
        assert sum(counts.values()) < int(m.group(2))  # address arithmetic and the like only count in "all"

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


LONGEST_LOOP = r"""
import sys
sys.path.insert(0, sys.argv[1])
from kernel_resources import longest_loop, sass_rows
print(longest_loop(sass_rows(sys.stdin.read())))
"""
# A walk's shape in cuobjdump's SASS: a prologue, a four-instruction loop closed by a backward branch, an EXIT, the
# self-branch that pads the end, and an out-of-line slow path that jumps back into the loop.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IMAD R2, R2, R3, RZ ;
        /*0020*/                   HGMMA.64x64x16.F32.BF16 gdesc[UR4], RZ ;
        /*0030*/                   FADD R4, R4, R5 ;
        /*0040*/              @!P0 BRA 0x120 ;
        /*0050*/               @P1 BRA 0x20 ;
        /*0060*/                   STG.E [R6.64], R4 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
        /*0120*/                   MUFU.RCP R7, R8 ;
        /*0130*/                   BRA 0x10 ;
"""


def _longest_loop(sass: str):
    # a process of its own: kernel_resources.py unsets TRITON_INTERPRET at import
    out = subprocess.run([sys.executable, "-c", LONGEST_LOOP, os.path.dirname(SCRIPT)], input=sass,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_longest_loop_is_the_body_s_backward_branch_not_out_of_line_code():
    # the loop 0x20-0x50, four instructions; the slow path's branch back to 0x10 (past EXIT) would read as ten
    assert _longest_loop(SASS) == "4"
    # without the loop's branch no loop is left, though the slow path still jumps back
    assert _longest_loop(SASS.replace("@P1 BRA 0x20", "@P1 FADD R4, R4, R4")) == "None"


CENSUS = re.compile(r"^\s+SASS: (.*)  all (\d+)  loop (\d+|-)$")


@pytest.mark.slow
def test_census_counts_each_kernels_sass_instructions_by_kind():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    out = subprocess.run([sys.executable, SCRIPT, "--ops", "rdn", "--shape", "1,64,2,32", "--kernels",
                          "_rdn_wy,_rdn_walk", "--census"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    rows = [i for i, line in enumerate(lines) if ROW.match(line)]
    names = [ROW.match(lines[i]).group(1) for i in rows]
    # the WY autotuner's four configs, then the forward walk as training (X stored), inference and rerun compile it,
    # each row followed by its census
    assert names[:4] == ["_rdn_wy_kernel"] * 4 and len(names) > 4
    assert all(name in ("_rdn_walk_kernel", "_rdn_walk_t_kernel") for name in names[4:])
    for i, name in zip(rows, names):
        m = CENSUS.match(lines[i + 1])
        assert m, lines[i + 1]
        counts = {kind: int(n) for kind, n in (part.rsplit(" ", 1) for part in m.group(1).split("  "))}
        assert list(counts) == ["HMMA", "HGMMA", "LDS", "STS", "BAR", "SHFL", "LDG", "STG", "LDL", "STL", "F2FP"]
        # k k^T and the 16 x 16 merges, the walk's dots, run on tensor cores; each loads and stores
        assert counts["HMMA"] + counts["HGMMA"] > 0 and counts["LDG"] > 0 and counts["STG"] > 0
        assert sum(counts.values()) < int(m.group(2))  # address arithmetic and the like only count in "all"
        if name == "_rdn_wy_kernel":
            assert m.group(3) == "-"  # its loops over the chunk's 16-row blocks are unrolled: no backward branch
        else:  # the walk's chunk step: most of the kernel, not all of it
            assert int(m.group(2)) / 2 < int(m.group(3)) < int(m.group(2))


def _hazards_module():
    # ttgir_hazards.py, not kernel_resources.py: that one unsets TRITON_INTERPRET at import, for the whole test run
    import importlib.util

    spec = importlib.util.spec_from_file_location("ttgir_hazards", os.path.join(os.path.dirname(SCRIPT),
                                                                                "ttgir_hazards.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A pipelined loop as Triton writes it (trimmed TTGIR): a state tile in one slot and a token tile in two rotating
# slots, both read by an asynchronous wgmma, then refilled for the next iteration before any wait.
_LOOP = """
    %a = ttg.local_alloc : () -> !ttg.memdesc<{SLOTS}x64x64xbf16, #shared, #smem, mutable> loc(#loc1)
    %b = ttg.local_alloc : () -> !ttg.memdesc<2x32x64xbf16, #shared, #smem, mutable>
    %r:3 = scf.for %i = %c0 to %c2 step %c1 iter_args(%acc = %z, %ra = %c0, %rb = %c0) -> (tensor<64x32xf32, #mma>, i32, i32)  : i32 {
      %w = ttg.async_wait %t {num = 0 : i32}
      %va = ttg.memdesc_index %a[%ra] : !ttg.memdesc<{SLOTS}x64x64xbf16> -> !ttg.memdesc<64x64xbf16>
      %vb = ttg.memdesc_index %b[%rb] : !ttg.memdesc<2x32x64xbf16> -> !ttg.memdesc<32x64xbf16>
      %vt = ttg.memdesc_trans %vb {order = array<i32: 1, 0>} : !ttg.memdesc<32x64xbf16> -> !ttg.memdesc<64x32xbf16>
      %d = ttng.warp_group_dot %va, %vt, %acc {inputPrecision = 0 : i32, isAsync = true} : a * b -> c
      {WAIT}
      %na = ttg.memdesc_index %a[%ra2] : !ttg.memdesc<{SLOTS}x64x64xbf16> -> !ttg.memdesc<64x64xbf16>
      %ca = ttg.async_copy_global_to_local %pa, %na mask %m other %o : tensor<64x64x!tt.ptr<bf16>> -> <64x64xbf16>
      %nb = ttg.memdesc_index %b[%rb2] : !ttg.memdesc<2x32x64xbf16> -> !ttg.memdesc<32x64xbf16>
      %cb = ttg.async_copy_global_to_local %pb, %nb mask %m other %o : tensor<32x64x!tt.ptr<bf16>> -> <32x64xbf16>
      scf.yield %d, %ra2, %rb2 : tensor<64x32xf32, #mma>, i32, i32
    }
    %done:1 = ttng.warp_group_dot_wait %r#0 {pendings = 0 : i32} : tensor<64x32xf32, #mma>
"""


def test_async_dot_hazards_name_a_one_slot_buffer_refilled_under_a_running_wgmma():
    hazards = _hazards_module().async_dot_hazards
    found = hazards(_LOOP.replace("{SLOTS}", "1").replace("{WAIT}", ""))
    # the one-slot state tile is refilled while the dot may read it; the token tile's refill goes to the other slot
    assert len(found) == 1 and found[0].startswith("%a (1 slot(s)) written while read by: %d = ttng.warp_group_dot")
    assert hazards(_LOOP.replace("{SLOTS}", "2").replace("{WAIT}", "")) == []
    waited = "%x:1 = ttng.warp_group_dot_wait %d {pendings = 0 : i32} : tensor<64x32xf32, #mma>"
    assert hazards(_LOOP.replace("{SLOTS}", "1").replace("{WAIT}", waited)) == []


# The same loop with the dot's left operand in registers (an "RS" wgmma), loaded from its slot at the loop top.
_REGISTER_LOOP = """
    %r:2 = scf.for %i = %c0 to %c2 step %c1 iter_args(%acc = %z, %ra = %c0) -> (tensor<64x32xf32, #mma>, i32)  : i32 {
      %va = ttg.memdesc_index %a[%ra] : !ttg.memdesc<2x64x64xbf16> -> !ttg.memdesc<64x64xbf16>
      %ra_regs = ttg.local_load %va : !ttg.memdesc<64x64xbf16> -> tensor<64x64xbf16, #ttg.dot_op<{opIdx = 0}>>
      %d = ttng.warp_group_dot %ra_regs, %vt, %acc {inputPrecision = 0 : i32, isAsync = true} : tensor<64x64xbf16, #ttg.dot_op<{opIdx = 0}>> * !ttg.memdesc<64x32xbf16> -> tensor<64x32xf32, #mma>
      {WAIT}
      scf.yield %d, %ra2 : tensor<64x32xf32, #mma>, i32
    }
"""


def test_async_dot_hazards_name_register_operands_redefined_under_a_running_wgmma():
    hazards = _hazards_module().async_dot_hazards
    found = hazards(_REGISTER_LOOP.replace("{WAIT}", ""))
    # the next iteration's local_load rewrites the registers the last iteration's dot may still read
    assert len(found) == 1
    assert found[0].startswith("%ra_regs (registers) redefined while read by: %d = ttng.warp_group_dot %ra_regs")
    waited = "%x:1 = ttng.warp_group_dot_wait %d {pendings = 0 : i32} : tensor<64x32xf32, #mma>"
    assert hazards(_REGISTER_LOOP.replace("{WAIT}", waited)) == []


@pytest.mark.slow
@pytest.mark.parametrize("shape, rla_walk", [("16,2048,16,128", "_residual_walk_kernel"),
                                             ("1,128,2,128", "_state_walk_kernel")])
def test_no_kernel_refills_a_shared_slot_under_a_running_wgmma(shape, rla_walk):
    # Every kernel of both ops at every config the autotuner may pick, compiled for sm_90 by this machine's Triton
    # (~80 s a shape): at (4, 2) RDN's gradient kernel put its state tiles in one slot refilled under the running
    # dots, and dk changed between runs (H200, 2026-12-04). The benchmark's shape takes the 64-wide and transposed
    # walks and RLA's one forward walk (RES_WALK), the small one the one-launch reverse walks, the untransposed forward
    # walk and RLA's lean walks.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    out = subprocess.run([sys.executable, SCRIPT, "--ops", "rdn,rla", "--shape", shape, "--hazards"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    kernels = {m.group(1) for m in map(ROW.match, out.stdout.splitlines()) if m}
    assert {"_rdn_bwd_grad_kernel", "_rdn_bwd_mats_kernel", "_rla_bwd_dqkg_kernel", rla_walk} <= kernels
    assert "HAZARD" not in out.stdout, [line for line in out.stdout.splitlines() if "HAZARD" in line]

"""The GPU check scripts' command lines (and gpu_env.sh's install) on a machine without CUDA: a device call is too
dear to spend on a typo, so bad arguments and a missing GPU must be one line and exit 2 here, before anything is
measured."""
import os
import subprocess
import sys

import pytest
import torch

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def run_script(name, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *args], capture_output=True, text=True,
                         timeout=300, env=env)
    return out.returncode, out.stdout, out.stderr.strip().splitlines()


@pytest.mark.parametrize("args, message", [
    (["--al"], "unknown argument '--al'"),
    (["--all", "--set"], "--set needs a value"),
    (["--no-keep", "--case"], "--case needs a value"),
])
def test_gpu_check_rdn_refuses_arguments_it_does_not_take(args, message):
    status, _, err = run_script("gpu_check_rdn.py", *args)
    assert status == 2 and len(err) == 1 and message in err[0] and "--all --time --tune" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_checks_without_cuda_say_so_in_one_line():
    status, _, err = run_script("gpu_check_rdn.py", "--all", "--set", "PREP_BK=64", "--no-keep", "--rerun")
    assert status == 2 and err == ["gpu_check_rdn.py needs a CUDA GPU and torch sees none (run it on the GPU "
                                   "machine: README)"]
    status, _, err = run_script("gpu_check_rla.py", "--case", "bf16")
    assert status == 2 and "needs a CUDA GPU and torch sees none" in err[-1]


def test_gpu_check_rdn_help_is_its_usage():
    status, out, _ = run_script("gpu_check_rdn.py", "--help")
    assert status == 0 and "gpu_check_rdn.py [--all] [--time] [--tune] [--keep | --no-keep]" in out
    assert "--rerun" in out


@pytest.mark.parametrize("inherited", ["0", "1"])
def test_gpu_check_rdn_tune_means_autotuned_configs(inherited):
    """gpu_check_rdn.py (and profile_kernels.py, which imports it) check the autotuned configs with --tune and the first
    ones without, whatever RLA_KERNELS_FIXED_CONFIG the caller exported (gpu_session.sh's rdn part exports 1)."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = sys.argv[2:]; import gpu_check_rdn; "
             "from rla_kernels import triton_utils; print(triton_utils.FIXED_CONFIG)")
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "RLA_KERNELS_FIXED_CONFIG": inherited}
    for args, fixed in (([], "True"), (["--tune"], "False")):
        out = subprocess.run([sys.executable, "-c", probe, SCRIPTS, *args], capture_output=True, text=True,
                             timeout=300, env=env)
        assert out.returncode == 0 and out.stdout.split() == [fixed], (args, out.stdout, out.stderr[-500:])


def _stand_ins(tmp_path, **scripts):
    """An environment whose PATH finds, first, a shell script for each named tool (``name=body``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_gpu_env_installs_from_the_sources_not_a_kept_build(tmp_path):
    """The device keeps ignored outputs between calls: a build/lib left by an earlier call (newer than a source
    restored since) must not be what gets installed. gpu_env.sh removes build/ before pip runs (here a stand-in
    python3 that logs whether build/ still exists when it is called)."""
    work = tmp_path / "tree"
    (work / "build" / "lib").mkdir(parents=True)
    (work / "build" / "lib" / "stale.py").write_text("patched = True\n")
    (work / ".whl").mkdir()
    (work / ".whl" / "fla_core-0.6.0-py3-none-any.whl").write_bytes(b"stand-in")
    env = _stand_ins(tmp_path, python3='if [ -d build ]; then state=build; else state=clean; fi\n'
                                       'echo "$state $*" >> calls.log\n')
    out = subprocess.run(["bash", "-c", f". {os.path.join(SCRIPTS, 'gpu_env.sh')} && echo $PYTHONPATH"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=60)
    calls = (work / "calls.log").read_text().splitlines()
    assert out.returncode == 0 and out.stdout.startswith("/tmp/site")
    assert len(calls) == 2 and all(c.startswith("clean -m pip install") for c in calls), calls
    assert calls[0].endswith(".whl/fla_core-0.6.0-py3-none-any.whl") and calls[1].endswith(" .")
    assert not (work / "build").exists()


def test_gpu_env_without_wheels_still_installs_the_package(tmp_path):
    """A call that did not carry .whl (fla's wheels) used to skip this package's install too (the chain's first pip
    failed on the unexpanded glob), so the kernel scripts failed on `import rla_kernels` (2026-12-03 22:16): now it
    says which wheels are missing, in one line, and installs the package alone."""
    work = tmp_path / "tree"
    work.mkdir()
    env = _stand_ins(tmp_path, python3='echo "$*" >> calls.log\n')
    out = subprocess.run(["bash", "-c", f". {os.path.join(SCRIPTS, 'gpu_env.sh')} && echo $PYTHONPATH"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=60)
    calls = (work / "calls.log").read_text().splitlines()
    assert out.returncode == 0 and out.stdout.splitlines()[-1].startswith("/tmp/site")
    assert "no .whl/*.whl in this tree" in out.stdout
    assert len(calls) == 1 and calls[0].startswith("-m pip install") and calls[0].endswith(" ."), calls


def _profile_kernels():
    """scripts/profile_kernels.py as a module (scripts/ is not a package)."""
    sys.path.insert(0, SCRIPTS)
    try:
        import profile_kernels
    finally:
        sys.path.remove(SCRIPTS)
    return profile_kernels


def test_profile_api_pass_runs_the_public_op_without_accumulating_gradients():
    """profile_kernels.py --api's pass: fwd+bwd through the public op (here its CPU backend), each call starting from
    no gradients, so a profile of several calls times each the same (an accumulating .grad would add a kernel)."""
    profile_kernels = _profile_kernels()
    torch.manual_seed(0)
    x = [torch.randn(1, 9, 2, 8), torch.randn(1, 9, 2, 8), torch.randn(1, 9, 2, 8),
         -torch.rand(1, 9, 2), torch.rand(1, 9, 2), torch.rand(1, 9, 2)]
    do = torch.randn(1, 9, 2, 8)
    for op in ("rla", "rdn"):
        run, leaves = profile_kernels.api_pass(op, x, do)
        run()
        first = [t.grad.clone() for t in leaves]
        run()
        assert all(torch.equal(a, t.grad) for a, t in zip(first, leaves)), op
        assert all(a.abs().sum() > 0 for a in first), op


def test_profile_host_time_and_sync_sites():
    """profile_kernels.py --host: the launching Python's time a call (here a call that sleeps 3 ms: at least that,
    not a sum of the five calls) and where a call synchronizes, read off sync debug mode's warnings (here made
    directly: two at one line, one at another, an unrelated warning left out)."""
    import time
    import warnings

    profile_kernels = _profile_kernels()
    host, syncs = profile_kernels.host_time(lambda: time.sleep(0.003))
    assert 3.0 <= host < 14.0 and not syncs, host
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for line, message in ((11, "called a synchronizing CUDA operation"), (11, "called a synchronizing CUDA "
                              "operation"), (42, "called a synchronizing CUDA operation"), (7, "something else")):
            warnings.warn_explicit(message, UserWarning, "/x/chunk.py", line)
    assert profile_kernels.sync_sites(caught) == {"chunk.py:11": 2, "chunk.py:42": 1}


def test_profile_packed_lengths():
    """profile_kernels.py --packed's sequences: B lengths summing to B*T, the same every run; uneven ones within T/4 of
    T (the last takes what is left) and none a multiple of 32, so every sequence ends mid-chunk; --packed equal's T
    each (the packed path at equal lengths)."""
    profile_kernels = _profile_kernels()
    for B, T in ((16, 2048), (4, 8192), (3, 100)):
        lengths = profile_kernels.packed_lengths(B, T)
        assert lengths == profile_kernels.packed_lengths(B, T) and len(lengths) == B and sum(lengths) == B * T
        assert all(n % 32 for n in lengths) and len(set(lengths)) > 1
        assert all(abs(n - T) <= T // 4 + 1 for n in lengths[:-1])
        assert profile_kernels.packed_lengths(B, T, "equal") == [T] * B


def test_gpu_session_applies_patches_before_the_install(tmp_path):
    """PATCHES: each applied to the tree before gpu_env.sh installs it (here a stand-in gpu_env.sh that logs what it
    would install); one that does not apply is one line and exit 2, before the install and any GPU work."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(SCRIPTS, "gpu_session.sh"), tmp_path / "scripts")
    (tmp_path / "scripts" / "gpu_env.sh").write_text("cat kernel.py > installed.log\n")
    (tmp_path / "kernel.py").write_text("WIDTH = 16\n")
    (tmp_path / "good.patch").write_text("--- a/kernel.py\n+++ b/kernel.py\n@@ -1 +1 @@\n-WIDTH = 16\n+WIDTH = 32\n")
    (tmp_path / "bad.patch").write_text("--- a/kernel.py\n+++ b/kernel.py\n@@ -1 +1 @@\n-WIDTH = 64\n+WIDTH = 8\n")
    # the device's tools, stood in for: nothing to query here
    env = {**_stand_ins(tmp_path, **{"nvidia-smi": "exit 0\n", "python3": "exit 0\n"}), "OUT": str(tmp_path / "out")}

    def session(patches):
        return subprocess.run(["bash", "scripts/gpu_session.sh", "none"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, env={**env, "PATCHES": patches})

    bad = session("bad.patch")
    assert bad.returncode == 2 and "gpu_session.sh: bad.patch does not apply to this tree" in bad.stdout
    assert not (tmp_path / "installed.log").exists()
    good = session("good.patch")
    assert good.returncode == 0 and "applied good.patch" in good.stdout
    assert (tmp_path / "installed.log").read_text() == "WIDTH = 32\n"


def test_gpu_session_warms_the_last_calls_kernels_then_logs_its_own(tmp_path):
    """Before the parts, warm_kernels.py compiles docs/next/compiles.jsonl (the last call's log) unless WARM=0; every
    part then runs with RLA_KERNELS_COMPILE_LOG=$OUT/compiles.jsonl (absolute) unless COMPILE_LOG=0, and its last line
    says how many kernels it compiled that the cache did not hold (here a stand-in python3 that logs its arguments
    and that variable, and whose profile adds two cache folders)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    (tmp_path / "docs" / "next").mkdir(parents=True)
    shutil.copy(os.path.join(SCRIPTS, "gpu_session.sh"), tmp_path / "scripts")
    (tmp_path / "scripts" / "gpu_env.sh").write_text(":\n")
    (tmp_path / "docs" / "next" / "compiles.jsonl").write_text("{}\n")
    # (the profile compiles two kernels the warm-up did not: two new folders in Triton's cache)
    python = ('echo "$* log=${RLA_KERNELS_COMPILE_LOG:-none}" >> calls.log\n'
              'case "$1" in scripts/profile_kernels.py) mkdir -p "$TRITON_CACHE_DIR/a$$" "$TRITON_CACHE_DIR/b$$" ;; esac\n')
    env = {**_stand_ins(tmp_path, **{"nvidia-smi": "exit 0\n", "python3": python}), "OUT": "out",
           "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache" / "warm").mkdir(parents=True)

    def session(**extra):
        (tmp_path / "calls.log").unlink(missing_ok=True)
        out = subprocess.run(["bash", "scripts/gpu_session.sh", "profile"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env={**env, **extra})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "=== profile done rc=0" in out.stdout and ", 2 kernels compiled (not in the cache)" in out.stdout
        return [line for line in (tmp_path / "calls.log").read_text().splitlines() if "import torch" not in line]

    warm, profile = session()
    assert warm == "scripts/warm_kernels.py docs/next/compiles.jsonl log=none"
    assert profile == f"scripts/profile_kernels.py log={tmp_path}/out/compiles.jsonl"
    assert session(WARM="0", COMPILE_LOG="0") == ["scripts/profile_kernels.py log=none"]


def test_gpu_session_runs_joined_parts_side_by_side(tmp_path):
    """"rdn+tests": the parts start together (here each stand-in python3 waits, up to 20 s, for the other's marker
    file: run one after the other, both would time out), their logs come after the group in the order named, and a
    failing part's status is the group's. TESTS="a; b" runs each ;-group as its own pytest, both in gpu_tests.txt
    (an empty group, or a newline's, is no pytest of its own: it would run every test)."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(SCRIPTS, "gpu_session.sh"), tmp_path / "scripts")
    (tmp_path / "scripts" / "gpu_env.sh").write_text(":\n")
    python = ('case "$*" in *gpu_check_rdn*) me=rdn; other=a.py ;; *a.py*) me=a.py; other=b.py ;; '
              '*b.py*) me=b.py; other=rdn ;; *pytest*) echo "a pytest of no file"; exit 0 ;; *) exit 0 ;; esac\n'
              'touch "started_$me"; i=0\n'
              'while [ ! -f "started_$other" ]; do i=$((i + 1)); [ $i -gt 200 ] && { echo "$me alone"; exit 1; }; '
              'sleep 0.1; done\n'
              'echo "$me ran beside $other"; [ "$me" != b.py ]\n')
    env = {**_stand_ins(tmp_path, **{"nvidia-smi": "exit 0\n", "python3": python}), "OUT": "out", "WARM": "0",
           "COMPILE_LOG": "0", "TESTS": "a.py;;\nb.py; ", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    out = subprocess.run(["bash", "scripts/gpu_session.sh", "rdn+tests"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    rdn, tests = lines.index("--- rdn"), lines.index("--- tests")
    assert rdn < lines.index("rdn ran beside a.py") < tests < lines.index("a.py ran beside b.py") \
        < lines.index("b.py ran beside rdn")
    assert "=== rdn+tests done rc=1" in out.stdout  # b.py's stand-in fails
    tests_log = (tmp_path / "out" / "gpu_tests.txt").read_text().splitlines()
    assert tests_log == ["a.py ran beside b.py", "b.py ran beside rdn"]
    assert sorted(os.listdir(tmp_path / "out")) == ["check_rdn.txt", "device.txt", "gpu_tests.txt"]


@pytest.mark.parametrize("args, message", [
    (["--passes", "fwd,bwdd"], "--passes takes a comma-separated list of fwd, bwd, infer, fla, rla_fwd, rla_bwd, "
                               "fla_gla; got 'fwd,bwdd'"),
    (["--shape", "16,2048,16"], "--shape takes B,T,H,K (four ints); got '16,2048,16'"),
])
def test_ncu_kernels_refuses_arguments_it_does_not_take(args, message):
    status, _, err = run_script("ncu_kernels.py", *args)
    assert status == 2 and err == [message]


# Two kernels as `gpu_session.sh ncu` exports them (ncu --page source --csv --print-source sass), the counters cut to
# the columns ncu_summary.py reads: the second kernel's loop (executed 64 times a warp) waits on its load's consumer.
NCU_SASS = '''### result 0
"Kernel Name","_a_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_long_sb","stall_wait"
"0x10","      LDC R1, c[0x0][0x28]","2","4","0","2"
"0x20","      EXIT","0","4","0","0"
### result 1
"Kernel Name","_b_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_long_sb","stall_wait"
"0x10","      S2R R0, SR_TID.X","1","8","0","1"
"0x20","  @!P0  LDG.E.U16 R4, desc[UR4][R2.64]","10","512","0","10"
"0x30","      IMAD.U32 R4, R4, 0x10000, RZ","80","512","79","1"
"0x40","      HMMA.16816.F32.BF16 R8, R4, R6, R8","9","512","0","9"
"0x50","      EXIT","0","8","0","0"
'''


def test_ncu_summary_charges_each_kernel_its_stalls(tmp_path):
    path = tmp_path / "ncu_source_sass.csv"
    path.write_text(NCU_SASS)
    status, out, err = run_script("ncu_summary.py", str(path), "--top", "1")
    assert status == 0 and not err
    lines = out.splitlines()
    assert lines[0] == "== result 0: _a_kernel: 0.0M warp instructions, 2 stall samples"
    b = lines[lines.index("== result 1: _b_kernel: 0.0M warp instructions, 100 stall samples"):]
    assert "LDG 33.0%" in b[1] and "IMAD 33.0%" in b[1]  # 512 of 1552 executed each
    assert b[2].startswith("   stalls:  long_sb 79.0%, wait 21.0%")
    assert b[4].startswith("   hottest loop: 3 instructions executed 512 times each")
    assert b[5].split()[:3] == ["2", "80.00%", "IMAD.U32"] and b[5].endswith("long_sb 79, wait 1")
    status, out, _ = run_script("ncu_summary.py", str(path), "--kernel", "1", "--around", "2")
    assert status == 0 and [line.split()[0] for line in out.splitlines()] == ["0", "1", "2"]


@pytest.mark.parametrize("args, message", [
    (["{csv}", "--around", "3"], "--around needs --kernel N (an index is a kernel's own)"),
    (["{csv}", "--kernel", "7"], "no kernel result 7 in {csv}: give the ncu_source_sass.csv that `bash "
                                 "scripts/gpu_session.sh ncu` writes"),
    (["{missing}"], "cannot read {missing}: No such file or directory"),
])
def test_ncu_summary_says_what_it_cannot_read(tmp_path, args, message):
    paths = {"csv": str(tmp_path / "ncu_source_sass.csv"), "missing": str(tmp_path / "none.csv")}
    (tmp_path / "ncu_source_sass.csv").write_text(NCU_SASS)
    status, _, err = run_script("ncu_summary.py", *(a.format(**paths) for a in args))
    assert status == 2 and err == [message.format(**paths)]

"""rla_kernels.compile_log and scripts/warm_kernels.py: compiling ahead, all at once, what a GPU call will compile. The
point is Triton's cache key: a warm-up that compiled anything else would cost device time and save none, so the
slow test compares the cache entries a JIT launch writes with those the warm-up writes, on an sm_90 target (the JIT
driven by a stand-in driver: it specialises and compiles, never launches)."""
import json
import os
import subprocess
import sys

import pytest

from rla_kernels import compile_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "warm_kernels.py")

PROBE = r'''
import json, os, sys
root, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(root, "scripts"))
import kernel_resources as kr  # real JIT functions (it pops TRITON_INTERPRET before Triton's import)
import torch
import warm_kernels
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction
from rla_kernels import compile_log

class StandInGPU:  # what the JIT asks a driver while it specialises and compiles for sm_90
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_current_target(self): return GPUTarget("cuda", 90, 32)

run = JITFunction.run
kr.Autotuner.run, JITFunction.run = kr._autotuner_run, kr._jit_run
kr.run_ops(["rdn"], [1, 64, 2, 32], torch.bfloat16, 132)  # records both passes' launches, runs nothing
JITFunction.run = run
# a plain launch and an autotuned kernel's three configs
launches = [l for l in kr.launches if l[0].__name__ in ("_rdn_bwd_dg_kernel", "_rdn_bwd_prep_k_kernel")]
driver.set_active(StandInGPU())

def cache(name):
    os.environ["TRITON_CACHE_DIR"] = path = os.path.join(work, name)
    return path

log = os.path.join(work, "compiles.jsonl")
compile_log.install(log)
jit = cache("jit")
for fn, args, kwargs, configs in launches:
    for config in configs:  # as the autotuner runs each config: the config's kwargs over the launch's
        fn.run(*args, grid=(1,), warmup=True, **kwargs, **config.all_kwargs())
knobs.runtime.jit_cache_hook = None
out = {}
recorded = [json.loads(line) for line in warm_kernels.launch_records(launches, GPUTarget("cuda", 90, 32))]
for name, records in (("recorded", recorded), ("logged", compile_log.read([log]))):
    path = cache(name)
    out[name] = compile_log.warm(records, 2)
    out[name + " entries"] = sorted(os.listdir(path))
out["jit entries"] = sorted(os.listdir(jit))
out["kernel"] = repr(compile_log.jit_function("rla_kernels.rdn.chunk_bwd", "_rdn_bwd_prep_k_kernel"))
print(json.dumps(out))
'''


@pytest.mark.slow
def test_warm_up_writes_the_cache_entries_the_jit_would(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    out = subprocess.run([sys.executable, "-c", PROBE, ROOT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # four compiles (the passes launch each kernel several times): the dg kernel, prep_k's three configs; each logged
    # once, recorded once, all compiled
    assert len(result["jit entries"]) == 4
    assert result["logged"] == [4, []] and result["recorded"] == [4, []]
    # the same four cache entries (Triton's cache key: source, specialisation, options, target, Triton) both ways
    assert result["logged entries"] == result["jit entries"]
    assert result["recorded entries"] == result["jit entries"]
    assert "JITFunction" in result["kernel"] and "_rdn_bwd_prep_k_kernel" in result["kernel"]  # through its autotuner


@pytest.mark.slow
def test_record_takes_the_float64_checks_cases_at_their_fixed_configs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_FIXED_CONFIG")}
    log = tmp_path / "checks.jsonl"
    out = subprocess.run([sys.executable, SCRIPT, "--record", str(log), "--workloads", "checks"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert out.stdout.strip() == f"{len(records)} compile records written to {log}"

    def constants(record):
        data = json.loads(record["data"])
        names = list(data["signature"])
        return {names[k[0]]: v for k, v in zip(data["constant_keys"], data["constant_vals"]) if len(k) == 1}

    # RDN's segmented K=48 and RLA's K=96 cases among the rest; the segmented forward's own kernels; both ops
    assert {48, 64, 96, 128} <= {constants(r).get("K") for r in records}
    assert {"_pseudo_values_kernel", "_rdn_bwd_grad_kernel", "_rla_bwd_dqkg_kernel"} <= {r["name"] for r in records}
    # the checks run fixed configs: the gradient kernel's first, 4 warps and 2 stages, in every case
    grads = [json.loads(r["data"])["options"] for r in records if r["name"] == "_rdn_bwd_grad_kernel"]
    assert len(grads) > 1 and {(o["num_warps"], o["num_stages"]) for o in grads} == {(4, 2)}


def _record(name="_rdn_bwd_dg_kernel", key="k1", libs="/elsewhere/libdevice.10.bc", warps=1):
    data = {"name": f"rla_kernels.rdn.chunk_bwd.{name}", "signature": {"T": "i32"}, "key": key,
            "options": {"num_warps": warps, "extern_libs": [["libdevice", libs]]}}
    return compile_log.record_line("rla_kernels.rdn.chunk_bwd", name, json.dumps(data))


def test_read_keeps_each_compile_once_whatever_its_in_memory_key(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_text(_record(key="k1") + "\n\n" + _record(key="k2") + "\n" + _record(warps=4) + "\n")
    log.write_text(log.read_text() + _record(key="k3", libs="/here/libdevice.10.bc") + "\n")
    records = compile_log.read([log, log])
    # k1/k2/k3 are one compile (preload only files it under the key; the libdevice path is each machine's own);
    # 4 warps is another
    assert len(records) == 2
    assert [json.loads(r["data"])["options"]["num_warps"] for r in records] == [1, 4]


def test_read_keeps_the_modules_asked_for(tmp_path):
    log = tmp_path / "a.jsonl"
    other = json.loads(_record())
    other["module"] = "fla.ops.common.chunk_h"
    log.write_text(_record() + "\n" + json.dumps(other) + "\n" + _record(warps=4) + "\n")
    assert [r["module"] for r in compile_log.read([log], ["fla.ops"])] == ["fla.ops.common.chunk_h"]
    assert len(compile_log.read([log], ["rla_kernels.rdn", "fla.ops.common"])) == 3
    assert len(compile_log.read([log])) == 3
    assert compile_log.read([log], ["rla_kernels.rla"]) == []


def test_read_names_the_line_that_is_not_a_record(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text(_record() + "\n" + '{"module": "m"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a compile record"):
        compile_log.read([log])


def test_portable_drops_the_recording_machines_files():
    data = json.loads(json.loads(_record())["data"])
    assert "extern_libs" in data["options"]
    portable = json.loads(compile_log.portable(json.dumps(data)))
    assert "extern_libs" not in portable["options"] and portable["options"]["num_warps"] == 1


def test_warm_skips_a_kernel_that_is_gone_and_says_which():
    done, skipped = compile_log.warm([json.loads(_record(name="_no_such_kernel"))], threads=1)
    assert done == 0 and len(skipped) == 1
    assert skipped[0].startswith("rla_kernels.rdn.chunk_bwd._no_such_kernel: AttributeError")


def test_a_skipped_compile_is_one_line_naming_what_was_wrong():
    # as Triton chains a compile error through the call sites: the source around each, the cause innermost
    try:
        try:
            try:
                raise NameError("name 'EVERY' is not defined")
            except NameError as e:
                raise RuntimeError("at 25:24:\n    b = tl.load(x)\n        ^") from e
        except RuntimeError as e:
            raise RuntimeError("at 13:8:\n    _walk(x, EVERY)\n    ^") from e
    except RuntimeError as error:
        line = compile_log._skip_line("m.kern", error)
    assert line == "m.kern: NameError: name 'EVERY' is not defined"


def test_install_appends_each_compile_and_keeps_an_earlier_hook(tmp_path, monkeypatch):
    from triton import knobs

    asked = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: asked.append(kw["fn"].name) or True)
    log = tmp_path / "log.jsonl"
    compile_log.install(str(log))

    class Fn:
        module, name = "some.module", "kern"
    answer = knobs.runtime.jit_cache_hook(key="k", repr="r", fn=Fn, compile={"specialization_data": '{"x": 1}'},
                                          is_manual_warmup=False, already_compiled=False)
    assert answer is True and asked == ["kern"]  # the earlier hook ran, and its answer (skip) stands
    assert json.loads(log.read_text()) == {"module": "some.module", "name": "kern", "data": '{"x": 1}'}


@pytest.mark.parametrize("args, message", [
    ([], "give the compile logs"),
    (["/no/such.jsonl"], "no such compile log: /no/such.jsonl"),
    (["--record", "x.jsonl", "--shapes", "16,2048,16"], "--shapes takes B,T,H,K"),
    (["--record", "x.jsonl", "--workloads", "bench,tests"], "--workloads takes a comma-separated list of bench, "
                                                            "checks; got 'bench,tests'"),
    (["LOG", "--modules", "rla_kernel.rla"], "is in a module starting with rla_kernel.rla; modules look like "
                                             "rla_kernels.rla.chunk_bwd"),
])
def test_script_refuses_bad_arguments_in_one_line(args, message):
    if args and args[0] == "LOG":  # the compile log gpu_session.sh warms from, which a misspelt prefix matches none of
        args = [os.path.join(ROOT, "docs", "next", "compiles.jsonl"), *args[1:]]
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr.strip().splitlines()[-1]

#!/usr/bin/env bash
# On the GPU machine: put fla's wheels (carried in .whl/) and this package on the path, in /tmp/site.
# Source it: `. scripts/gpu_env.sh`. The GPU image has torch, triton and transformers already.
# Drop setuptools' build/ first: the device keeps ignored outputs between calls, and build_py recopies a source only
# when it is newer than its build/lib copy, so a file patched by one call and restored by the next (an older mtime)
# stayed patched in /tmp/site (2026-12-02: three calls benched a `git apply`'d forward walk that way).
# Without .whl/ (a call that did not carry it, or a fresh checkout that never downloaded it: 2026-12-03 22:16) fla is
# missing but this package still installs: the kernel checks, profiles and anatomies need only it; fla's baselines
# and the tests that compare with fla then fail by name.
rm -rf build
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
else
  echo "gpu_env.sh: no .whl/*.whl in this tree (carry .whl: fla's wheels, docs/next/README.md); installing without fla"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
  && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

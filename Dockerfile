# WhisperX worker, variant A: the monolith. One build gives the whole image (dependencies,
# baked models and src/).
#
#   DOCKER_BUILDKIT=1 docker build --secret id=hf_token,src=./.hf_token \
#       -t your-dockerhub/whisperx-worker:latest .
#
# Everything down to the "application layer" marker is Dockerfile.base, instruction for
# instruction (scripts/docker_build_test.sh checks it), so this build and the base+app pair
# (variant B) share their layers in the build cache. The comments about the choices made
# live in Dockerfile.base; docs/DEPLOY.md describes the build arguments.
ARG BASE_IMAGE=python:3.11-slim-bookworm
# CTranslate2, the Whisper engine. "source" (default) builds it from its release source with
# machine code for CT2_CUDA_ARCH_LIST (builder/build_ctranslate2.sh; ~20-40 min once, then
# cached): PyPI's wheel holds machine code up to sm_86 only, so every H100/H200 (sm_90) and
# L4/L40S/RTX 4090 (sm_89) worker would JIT-compile its kernels at its first call (10-14 s of
# each cold start at large-v3 size). "pypi" keeps PyPI's wheel (a quick build, e.g. for CPU).
ARG CTRANSLATE2_FROM=source
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu22.04

FROM ${CUDA_DEVEL_IMAGE} AS ctranslate2-source
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CTRANSLATE2_VERSION=4.8.5
ARG ONEDNN_VERSION=3.1.1
ARG CT2_CUDA_ARCH_LIST="8.0 8.6 8.9 9.0 9.0+PTX"
# The wheel is built for the worker's Python (3.11) against this CUDA 12 toolkit.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates g++ make git python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,source=builder/build_ctranslate2.sh,target=/tmp/build_ctranslate2.sh \
    git clone --quiet --recursive --depth 1 --shallow-submodules --branch "v${CTRANSLATE2_VERSION}" \
      https://github.com/OpenNMT/CTranslate2.git /tmp/ct2 \
 && git clone --quiet --depth 1 --branch "v${ONEDNN_VERSION}" https://github.com/oneapi-src/oneDNN.git /tmp/onednn \
 && PYTHON=python3.11 CT2_CUDA_ARCH_LIST="${CT2_CUDA_ARCH_LIST}" bash /tmp/build_ctranslate2.sh /tmp/ct2 /tmp/onednn /wheels \
 && rm -rf /tmp/ct2 /tmp/onednn

FROM ${BASE_IMAGE} AS ctranslate2-pypi
RUN mkdir -p /wheels

# The stage the worker takes its CTranslate2 wheel from (BuildKit builds only that one); a
# stage of this file, so there is no image tag to pin.
# hadolint ignore=DL3006
FROM ctranslate2-${CTRANSLATE2_FROM} AS ctranslate2-wheel

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ffmpeg decodes and resamples input audio, libsndfile1 backs soundfile/librosa; libpython3.11
# is for torchcodec's FFmpeg bindings when Python comes from apt (python images ship it).
# DL3008 (pin apt versions) is ignored: Debian replaces package versions in place with
# security updates, so a pin breaks the build within weeks; the base image tag and
# requirements.txt are what pin this image.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates ffmpeg libsndfile1 \
 && if ! command -v python3.11 >/dev/null; then \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11; \
    fi \
 && rm -rf /var/lib/apt/lists/*

# One venv at a fixed path whatever the base image, so the paths below hold everywhere.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python3.11 -m venv /opt/venv

COPY requirements.txt /tmp/requirements.txt
# The pip cache lives in a BuildKit cache mount: not in the image, but reused by rebuilds.
# Behind a TLS-inspecting proxy, pass its CA bundle as the optional secret ca_bundle
# (--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt): pip and the model fetcher
# use it during their RUN only, and it is not left in the image.
# A CTranslate2 wheel built above replaces PyPI's (same version; mounted, so not kept in a
# layer). DL3013: that wheel is a file, its version the one requirements.txt pins.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=ctranslate2-wheel,source=/wheels,target=/tmp/ctranslate2-wheels \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip install -r /tmp/requirements.txt \
 && set -- /tmp/ctranslate2-wheels/*.whl \
 && if [ -e "$1" ]; then pip install --no-deps --force-reinstall "$@"; fi \
 && python -c "import ctranslate2, torch, whisperx; print('ctranslate2', ctranslate2.__version__, 'torch', torch.__version__)"

# Where the worker finds its models (read by src/settings.py, whisperX,
# nltk, huggingface_hub and torch.hub); the fetcher bakes into the same places.
# ALIGN_MODEL_RU is a folder saved by the fetcher; ALIGN_MODEL_EN names the torchaudio
# bundle, whose checkpoint is baked into TORCH_HOME. When a language is left out of
# BAKE_ALIGN_LANGS, set its ALIGN_MODEL_<LANG> to an empty value when deploying.
ENV MODELS_DIR=/models \
    HF_HOME=/models/hf \
    TORCH_HOME=/models/torch \
    NLTK_DATA=/models/nltk_data \
    OFFLINE_DIARIZATION_DIR=/models/offline-diarization \
    ALIGN_MODEL_RU=/models/wav2vec2-ru \
    ALIGN_MODEL_EN=WAV2VEC2_ASR_BASE_960H \
    PYANNOTE_METRICS_ENABLED=false \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

# Which models are baked (see builder/fetch_models.py --help). OFFLINE_TEST_ASSETS, a folder
# inside builder/ of the build context, bakes the small offline test models instead.
# DIARIZATION_MODELS: the gated pyannote pipelines baked (comma/blank separated), each with
# every file its config.yaml names (src/stages/pyannote_hub.py lists them). HUB_MIRROR, a Hugging
# Face cache folder inside builder/, stands in for the Hub (the image test's production ids).
# MODELS_REFRESH: change it to re-run the fetch when nothing else changed (the hf_token
# secret is not part of the build cache key, so adding a token alone reuses the old layer).
ARG BAKE_ASR=1
ARG ASR_MODELS=bzikst/faster-whisper-large-v3-russian
ARG BAKE_ALIGN_LANGS="ru en"
ARG BAKE_DIARIZATION=1
ARG DIARIZATION_MODELS=pyannote/speaker-diarization-3.1
ARG HUB_MIRROR=""
ARG BAKE_OFFLINE_DIARIZATION=1
ARG BAKE_NLTK=1
ARG OFFLINE_TEST_ASSETS=""
ARG MODELS_REFRESH=0
# The Hugging Face token is a BuildKit secret: a file under /run/secrets during this RUN
# only, never in a layer, a build argument or `docker history`.
RUN --mount=type=bind,source=builder,target=/tmp/builder \
    --mount=type=bind,source=src/stages/pyannote_hub.py,target=/tmp/src/stages/pyannote_hub.py \
    --mount=type=secret,id=hf_token \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then \
      export PIP_CERT=/run/secrets/ca_bundle REQUESTS_CA_BUNDLE=/run/secrets/ca_bundle SSL_CERT_FILE=/run/secrets/ca_bundle; \
    fi \
 && python /tmp/builder/fetch_models.py \
      --models-dir "${MODELS_DIR}" \
      --asr "${BAKE_ASR}" --asr-models "${ASR_MODELS}" \
      --align-langs "${BAKE_ALIGN_LANGS}" \
      --diarization "${BAKE_DIARIZATION}" --diarization-models "${DIARIZATION_MODELS}" \
      --offline-diarization "${BAKE_OFFLINE_DIARIZATION}" \
      --nltk "${BAKE_NLTK}" \
      --hf-token-file /run/secrets/hf_token \
      ${OFFLINE_TEST_ASSETS:+--offline-test-assets "/tmp/builder/${OFFLINE_TEST_ASSETS}"} \
      ${HUB_MIRROR:+--hub-mirror "/tmp/builder/${HUB_MIRROR}"}

# ctranslate2 4.x dlopens libcublas.so.12 (and cuDNN 9) by name: make the pip-installed
# copies findable. src/resident/gpu_check.py reports at start-up when they are not.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# ---- application layer (Dockerfile.app) ----
COPY src/ /app/src/
# The SDK's local test mode reads it when the container is started outside RunPod with no
# arguments (docs/DEPLOY.md); on RunPod it is not read.
COPY test_input.json /app/test_input.json

# RunPod starts the worker with this; `python -u src/handler.py --test_input '{...}'` runs
# one job locally and exits.
CMD ["python", "-u", "src/handler.py"]

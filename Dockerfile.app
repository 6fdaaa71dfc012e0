# WhisperX worker, variant B, part 2: the application image. Only src/ on top of the base
# image built from Dockerfile.base, so a code change rebuilds in seconds.
#
#   docker build -f Dockerfile.app \
#       --build-arg WORKER_BASE=your-dockerhub/whisperx-worker-base:latest \
#       -t your-dockerhub/whisperx-worker:latest .
#
# The base image carries Python, the dependencies, the models and every ENV setting.
ARG WORKER_BASE=whisperx-worker-base:latest
FROM ${WORKER_BASE}

COPY src/ /app/src/
# The SDK's local test mode reads it when the container is started outside RunPod with no
# arguments (docs/DEPLOY.md); on RunPod it is not read.
COPY test_input.json /app/test_input.json

# RunPod starts the worker with this; `python -u src/handler.py --test_input '{...}'` runs
# one job locally and exits.
CMD ["python", "-u", "src/handler.py"]

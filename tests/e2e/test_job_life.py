"""A job's life under the real RunPod SDK job loop (``python -u src/handler.py`` against a stub
of RunPod's job server on 127.0.0.1, ``tests/runpod_stub.py``): cancel stops the job's work
and frees its slot, a short clip is not held behind a long file, start-up failures answer
every job instead of a crash loop, and the SDK prints no job output.

Every assertion is about events (what the worker logged or posted, in which order), never
about wall time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_audio import CLIP, concat_clips, festvox_wav, transcript
from references import ROOT, assert_transcript_of, require_assets
from runpod_stub import RunPodStub
from servers import stop_process, worker_env

pytestmark = pytest.mark.slow


class SdkWorker:
    """The worker process in RunPod mode (the SDK's job loop), pointed at ``stub``."""

    def __init__(self, stub: RunPodStub, folder: Path, **env: str) -> None:
        self.log = folder / "stdout.txt"
        self.container_log = folder / "container_log.txt"
        # RUNPOD_MIN_DISK_PERCENT=0: the SDK's fitness check exits when the disk is >90 % full;
        # the test host's disk is not what these tests are about (CI failed on exactly that).
        self.env = worker_env(**stub.env(), ALLOW_LOCAL_FILES="true", CONTAINER_LOG_PATH=str(self.container_log),
                              TMPDIR=str(folder), RUNPOD_MIN_DISK_PERCENT="0", **env)
        self.stub = stub
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SdkWorker:
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-u", "src/handler.py"], cwd=ROOT, env=self.env,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.stub.watch(self.raise_if_exited)
        return self

    def raise_if_exited(self) -> None:
        """Fail with the worker's last output if its process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise RuntimeError(f"worker exited with code {self.proc.returncode}:\n" + "\n".join(tail))

    def lines(self) -> list[str]:
        return self.container_log.read_text(encoding="utf-8", errors="replace").splitlines() if self.container_log.exists() else []

    def first_line(self, pattern: str) -> int:
        """Index of the first container-log line matching ``pattern`` (-1 if none)."""
        return next((i for i, line in enumerate(self.lines()) if re.search(pattern, line)), -1)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_process(self.proc)
        self._out.close()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    require_assets()
    path, _, _ = concat_clips(tmp_path_factory.mktemp("long") / "long.wav", 150.0)
    return path


def test_cancel_stops_the_job_and_frees_its_slot(tmp_path, long_file):
    """RunPod stops a 2.5-minute job during its transcription: the job's thread ends with
    "cancelled" (no "done"), posts no progress after that, and with one slot the next job
    starts only after that, and is answered."""
    with RunPodStub() as stub, SdkWorker(stub, tmp_path, MAX_CONCURRENT_JOBS="1", WARMUP="false") as worker:
        stub.submit("long-1", {"audio_file": str(long_file), "language": "ru"})
        stub.wait_for_progress("long-1", "transcribe", timeout_s=600)
        stub.stop("long-1")
        stub.submit("short-1", {"audio_file": str(festvox_wav(CLIP)), "diarization": False})
        short = stub.result("short-1", timeout_s=600)
        assert "output" in short.data, short.data
        assert_transcript_of(CLIP, transcript(short.data["output"]))
        cancelled = worker.first_line(r"job long-1 rejected: job cancelled by RunPod during")
        started_next = worker.first_line(r"job short-1 started")
        assert cancelled >= 0, worker.lines()[-20:]
        assert worker.first_line(r"job long-1 done") == -1
        assert cancelled < started_next  # the one slot was freed by the cancelled job's thread
        last_long_progress = max(p.at for p in stub.progress("long-1"))
        assert last_long_progress < short.at
        assert worker.proc is not None and worker.proc.poll() is None


def test_short_clip_is_not_held_behind_a_long_file(tmp_path, long_file):
    """Two jobs at once on a CPU worker: a clip submitted while a 2.5-minute file (with
    diarization) is transcribed is answered before the long file."""
    with RunPodStub() as stub, SdkWorker(stub, tmp_path, MAX_CONCURRENT_JOBS="2", WARMUP="false"):
        stub.submit("long-2", {"audio_file": str(long_file), "language": "ru"})
        stub.wait_for_progress("long-2", "transcribe", timeout_s=600)
        stub.submit("short-2", {"audio_file": str(festvox_wav(CLIP)), "language": "ru"})
        short = stub.result("short-2", timeout_s=900)
        long = stub.result("long-2", timeout_s=900)
        assert "output" in short.data and "output" in long.data, (short.data, long.data)
        assert short.at < long.at
        assert short.data["output"]["segments"][0].get("speaker")  # diarized too, not skipped


@pytest.mark.parametrize("env, named", [
    ({"JOB_TIMEOUT_S": "inf"}, "JOB_TIMEOUT_S"),
    ({"DOWNLOAD_CONNECT_TIMEOUT": "nan", "CPU_THREADS": "-4"}, "CPU_THREADS"),
    ({"BUCKET_ENDPOINT_URL": "https://bucket.example.com", "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
      "BUCKET_SECRET_ACCESS_KEY": "secret-value-123"}, "BUCKET_NAME"),
    ({"WORKER_DEVICE": "cuda"}, "WORKER_DEVICE"),
])
def test_a_worker_that_cannot_start_answers_every_job_with_the_cause(tmp_path, env, named):
    """A bad setting or an unusable device: the process keeps running and each job gets an
    error naming the cause, logged once at start-up."""
    with RunPodStub() as stub, SdkWorker(stub, tmp_path, WARMUP="false", **env) as worker:
        for n in range(2):
            stub.submit(f"bad-{n}", {"audio_file": str(festvox_wav(CLIP))})
            posted = stub.result(f"bad-{n}", timeout_s=300)
            error = str(posted.data.get("output", {}).get("error", "")) or str(posted.data.get("error", ""))
            assert named in error and "start-up" in error, posted.data
        assert worker.proc is not None and worker.proc.poll() is None
        text = worker.container_log.read_text()
        assert text.count("worker start-up failed") == 1, text[-3000:]
        assert "secret-value-123" not in text and "secret-value-123" not in worker.log.read_text()


def test_sdk_prints_no_job_output(tmp_path):
    """The SDK's own DEBUG line "Handler output" (whole transcripts, result links) is off
    unless RUNPOD_LOG_LEVEL asks for it."""
    with RunPodStub() as stub, SdkWorker(stub, tmp_path, WARMUP="false") as worker:
        stub.submit("quiet-1", {"audio_file": str(festvox_wav(CLIP)), "diarization": False, "language": "ru"})
        output = stub.result("quiet-1", timeout_s=300).data["output"]
        words = transcript(output).split()
        assert words
        stdout = worker.log.read_text(encoding="utf-8", errors="replace")
        assert "Handler output" not in stdout
        assert " ".join(words[:4]) not in stdout


def test_queue_streaming_sends_each_window_then_the_answer(tmp_path, long_file):
    """QUEUE_STREAMING=true: the SDK streams a partial segment per decoded window (batch_size 1)
    before the answer, the partials' text is the answer's, /run gets every chunk; a failure is
    streamed as a chunk a /stream reader sees, and the job ends as failed."""
    with RunPodStub() as stub, SdkWorker(stub, tmp_path, QUEUE_STREAMING="true", WARMUP="false"):
        stub.submit("stream-1", {"audio_file": str(long_file), "language": "ru", "diarization": False, "batch_size": 1})
        final = stub.result("stream-1", timeout_s=900)
        chunks = [post.data["output"] for post in stub.streamed("stream-1")]
        partials = [chunk["partial"] for chunk in chunks if "partial" in chunk]
        assert len(partials) >= 2 and all("partial" in chunk for chunk in chunks[:-1])
        answer = chunks[-1]["result"]
        assert " ".join(p["text"] for p in partials) == " ".join(s["text"].strip() for s in answer["segments"] if s["text"].strip())
        assert final.data["output"] == chunks  # /run's view: every chunk (return_aggregate_stream)
        assert max(post.at for post in stub.streamed("stream-1") if "partial" in post.data["output"]) < final.at
        stub.submit("stream-bad", {"audio_file": str(long_file), "beam_size": 0})
        failed = stub.result("stream-bad", timeout_s=300)
        assert "beam_size" in failed.data["error"]
        streamed = [post.data["output"] for post in stub.streamed("stream-bad")]
        assert len(streamed) == 1 and "beam_size" in streamed[0]["failed"]["error"]

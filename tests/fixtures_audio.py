"""Shared helpers for the robustness and load tests: media made at test time from festvox-ru
speech (ffmpeg / numpy / soundfile), a hostile HTTP server on 127.0.0.1, and small request
helpers around ``WorkerApi``.

Everything here is bounded: the special server never sleeps more than 2 s per request, its
threads are daemons, and every HTTP call has a timeout.
"""

from __future__ import annotations

import base64
import http.server
import io
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
import soundfile as sf

from references import FESTVOX, PYANNOTE_SAMPLE
from servers import LocalServer
from stages.speaker_assignment import longest_spans

SAMPLE_RATE = 16_000

# Short festvox-ru clips (3.8-5 s) that Whisper base transcribes well on CPU.
SHORT_CLIPS = ("ru_0683", "ru_0308", "ru_0063", "ru_0695", "ru_0054", "ru_0306")
CLIP = "ru_0308"  # the clip most cases use: "Это странно, но я уж, как-то привыкла к вам."
LONG_SECONDS = 180.0  # the one long input (3 minutes of concatenated clips)
MAX_SLEEP_S = 2.0  # cap of every deliberate delay of the special server


def festvox_wav(clip: str) -> Path:
    return FESTVOX / "wav" / f"{clip}.wav"


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; raise on failure."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def concat_clips(dest: Path, seconds: float) -> tuple[Path, float, list[str]]:
    """A 16 kHz mono PCM16 WAV of consecutive festvox clips lasting at least ``seconds``.

    Returns (path, duration in seconds, clip ids in order). 0.3 s of silence separates clips.
    """
    gap = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    parts, clips, total = [], [], 0
    for wav in sorted((FESTVOX / "wav").glob("ru_*.wav")):
        samples, rate = sf.read(str(wav), dtype="float32")
        assert rate == SAMPLE_RATE
        parts += [samples, gap]
        clips.append(wav.stem)
        total += samples.size + gap.size
        if total >= seconds * SAMPLE_RATE:
            break
    sf.write(str(dest), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return dest, total / SAMPLE_RATE, clips


def build_media(root: Path) -> dict[str, Path]:
    """Every input variant the robustness tests serve, written under ``root``.

    Good speech: ``clip.wav`` (CLIP), ``short_<clip>.wav`` for SHORT_CLIPS, ``video.mp4``
    (mpeg4 video + AAC audio of CLIP), ``tel8k.wav`` (8 kHz mu-law), ``six.wav`` (6 channels,
    48 kHz), ``cut.mp3`` (first half of an MP3 of CLIP). Bad audio: the rest.
    """
    root.mkdir(parents=True, exist_ok=True)
    src = str(festvox_wav(CLIP))
    files: dict[str, Path] = {}

    def name(n: str) -> Path:
        files[n] = root / n
        return files[n]

    shutil.copy(src, name("clip.wav"))
    for clip in SHORT_CLIPS:
        shutil.copy(festvox_wav(clip), name(f"short_{clip}.wav"))
    color = ["-f", "lavfi", "-i", "color=c=blue:s=64x48:r=5"]
    ffmpeg(*color, "-i", src, "-map", "0:v", "-map", "1:a", "-shortest",
           "-c:v", "mpeg4", "-c:a", "aac", "-ar", "44100", "-ac", "2", str(name("video.mp4")))
    ffmpeg(*color, "-t", "2", "-c:v", "mpeg4", str(name("video_no_audio.mp4")))
    ffmpeg("-i", src, "-ar", "8000", "-c:a", "pcm_mulaw", str(name("tel8k.wav")))
    ffmpeg("-i", src, "-ac", "6", "-ar", "48000", str(name("six.wav")))
    ffmpeg("-i", src, "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k", str(name("speech.mp3")))
    mp3 = files["speech.mp3"].read_bytes()
    name("cut.mp3").write_bytes(mp3[: len(mp3) // 2])  # MP3 frames are independent: first half decodes
    name("empty.wav").write_bytes(b"")
    sf.write(str(name("header_only.wav")), np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    sf.write(str(name("silence10.wav")), np.zeros(10 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    rng = np.random.default_rng(1234)
    noise = np.clip(rng.standard_normal(5 * SAMPLE_RATE) * 0.3, -1, 1).astype(np.float32)
    sf.write(str(name("noise5.wav")), noise, SAMPLE_RATE, subtype="PCM_16")
    speech, _ = sf.read(src, dtype="float32")
    sf.write(str(name("tiny5ms.wav")), speech[SAMPLE_RATE: SAMPLE_RATE + 80], SAMPLE_RATE, subtype="PCM_16")
    name("text.txt").write_text("this is a plain text file, not audio\n" * 40)
    shutil.copy(files["text.txt"], name("text.bin"))
    name("page.html").write_text("<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>\n")
    wav = files["clip.wav"].read_bytes()
    data_at = wav.index(b"data") + 8
    # RIFF/WAVE header that promises 44.1 kHz stereo float, followed by random bytes.
    name("garbage.wav").write_bytes(b"RIFF\xff\xff\xff\x7fWAVEjunk" + rng.bytes(4000))
    # A valid header followed by 2 ms of samples: the data chunk claims far more.
    name("truncated.wav").write_bytes(wav[: data_at + 64])
    # 100 bytes in all, of a WAV whose header promises 11 s.
    sf.write(str(name("promises11s.wav")), np.zeros(11 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    files["promises11s.wav"].write_bytes(files["promises11s.wav"].read_bytes()[:100])
    name("garbage.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x10" + rng.bytes(3000))
    return files


# ---------------------------------------------------------------------------
# Hostile HTTP server
# ---------------------------------------------------------------------------

_HTML = b"<!DOCTYPE html><html><body>Please log in to download this file</body></html>"
_CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".mp4": "video/mp4", ".txt": "text/plain",
                  ".html": "text/html"}


class _QuietThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # sleeping handlers never block shutdown

    def handle_error(self, request, client_address) -> None:
        """Clients abort on purpose (timeouts, size limits): keep the test output clean."""


def _make_handler(files: dict[str, Path], hits: Counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _clip_headers(self) -> bytes:
            """Send the headers of a 200 answer carrying clip.wav; returns the body to send."""
            body = files["clip.wav"].read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/octet-stream",
                  headers: dict | None = None, length: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            path = parts.path
            hits[path] += 1
            segs = path.strip("/").split("/")
            route = segs[0]
            delay = min(float(query.get("delay", "1.5")), MAX_SLEEP_S)
            if route == "files" and len(segs) == 2 and segs[1] in files:
                file = files[segs[1]]
                self._send(200, file.read_bytes(), _CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
            elif route == "status":  # /status/<code>
                self._send(int(segs[1]), b"<h1>server error</h1>", "text/html")
            elif route == "html":  # a login page served with 200
                self._send(200, _HTML, "text/html; charset=utf-8")
            elif route == "html-as-audio.wav":  # HTML body with an audio Content-Type
                self._send(200, b"\n " + _HTML, "audio/wav")
            elif route == "loop":  # redirects to itself forever
                self._send(302, headers={"Location": path})
            elif route == "redirect":  # /redirect?to=<url>
                self._send(302, headers={"Location": query["to"]})
            elif route == "slow-headers":  # nothing at all for `delay` seconds
                time.sleep(delay)
                self._send(200, files["clip.wav"].read_bytes(), "audio/wav")
            elif route == "slow-body":  # headers and half the body, then a stall
                body = self._clip_headers()
                try:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(delay)
                    self.wfile.write(body[len(body) // 2:])
                except OSError:
                    pass
            elif route == "drip":  # the clip one byte a second: every read succeeds, the download never ends
                body = self._clip_headers()
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(1.0)
                except OSError:
                    pass
            elif route == "nolength":  # /nolength/<file>: body without Content-Length
                self._send(200, files[segs[1]].read_bytes(), "audio/wav", length=False)
            else:
                self._send(404, b"not found", "text/plain")

    return Handler


class HostileServer(LocalServer):
    """Threaded HTTP server on 127.0.0.1 with misbehaving routes (see ``_make_handler``).

    ``hits`` counts requests per path (retries are visible there).
    """

    def __init__(self, files: dict[str, Path]) -> None:
        self.hits: Counter = Counter()
        super().__init__(_QuietThreadingServer(("127.0.0.1", 0), _make_handler(files, self.hits)))


# ---------------------------------------------------------------------------
# Requests and checks
# ---------------------------------------------------------------------------


def post_raw(base: str, route: str, body: bytes | str, timeout_s: float = 300) -> requests.Response:
    """POST a raw JSON body (e.g. with NaN, or a non-object input) to the worker API."""
    data = body.encode() if isinstance(body, str) else body
    return requests.post(f"{base}/{route.lstrip('/')}", data=data, headers={"Content-Type": "application/json"},
                         timeout=timeout_s)


def run_and_poll(base: str, job_input: dict, timeout_s: float = 300, poll_s: float = 0.2) -> dict:
    """POST /run, then poll /status/{id} until a final status (bounded by ``timeout_s``).

    The SDK's local API queues the job on /run and runs it when /status (a POST there) is
    first asked for it.
    """
    started = time.monotonic()
    queued = requests.post(f"{base}/run", json={"input": job_input}, timeout=30)
    queued.raise_for_status()
    job_id = queued.json()["id"]
    while time.monotonic() - started < timeout_s:
        response = requests.post(f"{base}/status/{job_id}", timeout=timeout_s)
        response.raise_for_status()
        status = response.json()
        if status.get("status") in ("COMPLETED", "FAILED"):
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s")


def transcript(output: dict) -> str:
    return " ".join(segment["text"] for segment in output["segments"]).strip()


def job_dirs(folder: Path) -> list[str]:
    """Names of leftover per-request working directories under ``folder``, at any depth: a
    worker started as ``src/handler.py`` keeps them in its own temp folder inside it."""
    return sorted(p.name for p in Path(folder).rglob("whisperx-job-*"))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


# ---------------------------------------------------------------- known speakers of pyannote's sample
def sample_turns() -> list[tuple[float, float, str]]:
    """pyannote's reference turns of its two-speaker ``sample.wav``: (start, end, speaker) in seconds."""
    turns = []
    for line in (PYANNOTE_SAMPLE / "sample.rttm").read_text().splitlines():
        fields = line.split()
        turns.append((float(fields[3]), float(fields[3]) + float(fields[4]), fields[7]))
    return turns


def sample_speaker_voice(speaker: str, seconds: float = 8.0) -> tuple[np.ndarray, int]:
    """Up to ``seconds`` of ``speaker`` (``speaker90`` or ``speaker91``) talking alone in the
    sample, longest stretches first, joined in time order; returns (samples, rate)."""
    audio, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    turns = sample_turns()
    stretches = []
    for start, end, who in turns:
        if who != speaker:
            continue
        pieces = [(start, end)]
        for other_start, other_end, other in turns:  # cut out everyone else's speech
            if other != speaker:
                pieces = [part for a, b in pieces
                          for part in ((a, min(b, other_start)), (max(a, other_end), b)) if part[1] > part[0]]
        stretches += pieces
    return np.concatenate([audio[int(a * rate):int(b * rate)] for a, b in longest_spans(stretches, seconds)]), rate


def wav_data_url(samples: np.ndarray, rate: int) -> str:
    """``samples`` as a 16-bit WAV in a data URL (how OpenAI's client sends a known speaker's sample)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

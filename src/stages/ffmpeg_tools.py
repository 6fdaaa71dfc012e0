"""Run ffprobe/ffmpeg on an untrusted media file: confined input, bounded output, killable.

Contract:

* :func:`input_args` gives the options every run must put in front of its one input.
  The input is opened through the ``file`` protocol only and read by a demuxer from
  :data:`INPUT_FORMATS`, a list of plain single-file audio/video containers. Demuxers that
  open further inputs named inside the file (hls, dash, concat/ffconcat, image2 patterns,
  sdp/rtsp/rtp, webm_dash_manifest, ...) and every network/meta protocol (http, data,
  subfile, tee, pipe, ...) can therefore never run, whatever the file says. A file probed as
  a demuxer outside the list is answered with the same :class:`fetch.AudioError`, naming only
  that demuxer, whether or not the paths it references exist (no oracle on local paths).
* :func:`run_tool` runs one process (argument list, no shell, no stdin, ``cwd`` = the job's
  working directory), streams its stdout to a callback in chunks of at most
  :data:`CHUNK_BYTES` (or captures it, bounded), keeps only the tail of stderr, and kills
  and reaps the process within :data:`POLL_S` of the job's :class:`job_control.JobControl` stopping
  or the time limit passing: no child outlives the call, whatever ends it.

Failures become ``AudioError("could not decode audio: ...")`` with a short stderr excerpt;
a stopped job raises the control's own ``JobCancelled``/``JobTimeout``.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job_control import JobControl
from stages.fetch import AudioError

logger = logging.getLogger("ffmpeg_tools")  # the bare name: log lines read as before the move

# Demuxers a downloaded file may be read with: plain containers whose samples all live in
# the file itself. Names are ffmpeg's demuxer names; "mov" also matches ffmpeg's
# "mov,mp4,m4a,3gp,3g2,mj2" and "matroska" its "matroska,webm" (the whitelist matches any
# comma-separated part). Opus/Vorbis/Speex arrive in "ogg", WMA in "asf". "tty" reads a text
# file as ANSI art (its own bytes only), so plain text keeps its clear "no audio stream"
# answer. Left out on purpose: every demuxer that opens other inputs (hls, dash, concat,
# image2, sdp, rtsp, rtp, webm_dash_manifest, ...), raw PCM (no header to check), images,
# subtitles and device grabbers.
INPUT_FORMATS: tuple[str, ...] = (
    # audio files
    "wav", "w64", "aiff", "au", "caf", "flac", "mp3", "ogg", "aac", "ac3", "eac3", "dts",
    "amr", "amrnb", "amrwb", "wv", "ape", "tta", "tak", "mpc", "mpc8", "voc", "nistsphere",
    # audio/video containers (audio is extracted)
    "mov", "matroska", "asf", "avi", "flv", "mpegts", "mpeg",
    # text, so that it is reported as "no audio stream" rather than as a container
    "tty",
)
FORMAT_WHITELIST = ",".join(INPUT_FORMATS)

POLL_S = 0.1  # how often a running tool looks at the job's control and its time limit
CHUNK_BYTES = 1 << 16  # largest stdout piece handed to the callback (one pipe buffer)
_MAX_CAPTURED_STDOUT = 4 << 20  # ffprobe's JSON for a sane file is a few KB
_STDERR_TAIL_BYTES = 64 << 10  # a hostile file can make ffmpeg log without end; keep the tail
_STDERR_MAX_CHARS = 300
_REAP_TIMEOUT_S = 5.0
_NOT_ON_WHITELIST = re.compile(r"\[([^\]@]+?) @ 0x[0-9a-f]+\] Format not on whitelist")


@dataclass(frozen=True)
class ToolOutput:
    """What a successful run printed (stdout is empty when a callback consumed it)."""

    stdout: bytes
    stderr: str


def input_args(path: Path) -> list[str]:
    """Options and ``-i`` for the one input: file protocol only, allowed demuxers only."""
    return [
        "-protocol_whitelist", "file",
        "-format_whitelist", FORMAT_WHITELIST,
        "-i", f"file:{Path(path).resolve()}",
    ]


def run_tool(
    args: list[str],
    *,
    cwd: Path,
    timeout_s: float,
    display_name: str,
    control: JobControl | None = None,
    stage: str = "audio decoding",
    on_stdout: Callable[[bytes], None] | None = None,
) -> ToolOutput:
    """Run ffmpeg/ffprobe and return its output; see the module docstring for the guarantees.

    The time limit is ``min(timeout_s, control.remaining())``. ``on_stdout`` may raise (e.g.
    an ``AudioError`` once the audio is over a limit): the process is then killed and the
    exception propagates.
    """
    tool = args[0]
    if control is not None:
        control.check(stage)
    limit_s = timeout_s if control is None else control.wait_time(timeout_s) or 0.0
    deadline = time.monotonic() + limit_s
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
        )
    except FileNotFoundError:
        # A missing binary is a deployment bug, not the user's fault.
        raise RuntimeError(f"{tool} is not installed or not on PATH") from None
    try:
        stdout, stderr_bytes = _pump(proc, tool, deadline, control, stage, on_stdout)
        _wait_exit(proc, deadline, control, stage)
    except _Expired:
        raise AudioError(f"could not decode audio: {tool} timed out after {limit_s:g} s") from None
    finally:
        _reap(proc, tool)
    stderr = stderr_bytes.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise _failure(tool, proc.returncode, stderr, display_name)
    return ToolOutput(stdout=stdout, stderr=stderr)


class _Expired(Exception):
    """Private: the run's own time limit (not the job's) passed."""


def _check_time(deadline: float, control: JobControl | None, stage: str) -> None:
    """Raise the job's stop if it must end, else _Expired once past the run's deadline."""
    if control is not None:
        control.check(stage)
    if time.monotonic() > deadline:
        if control is not None:
            control.check(stage)  # the deadline may be the job's own: report it as such
        raise _Expired


def _pump(
    proc: subprocess.Popen,
    tool: str,
    deadline: float,
    control: JobControl | None,
    stage: str,
    on_stdout: Callable[[bytes], None] | None,
) -> tuple[bytes, bytes]:
    """Read stdout and stderr until both close, looking at the clock every POLL_S.

    Both pipes are drained together: a tool blocked on a full stderr pipe would never finish
    its stdout. Returns (captured stdout, stderr tail).
    """
    assert proc.stdout is not None and proc.stderr is not None
    captured = bytearray()
    stderr_tail = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        while selector.get_map():
            for key, _ in selector.select(timeout=POLL_S):
                data = os.read(key.fd, CHUNK_BYTES)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.data == "err":
                    stderr_tail += data
                    del stderr_tail[:-_STDERR_TAIL_BYTES]
                elif on_stdout is not None:
                    on_stdout(data)
                else:
                    captured += data
                    if len(captured) > _MAX_CAPTURED_STDOUT:
                        raise AudioError(f"could not decode audio: {tool} output is too large")
            _check_time(deadline, control, stage)
    return bytes(captured), bytes(stderr_tail)


def _wait_exit(proc: subprocess.Popen, deadline: float, control: JobControl | None, stage: str) -> None:
    """Wait for the exit status once the pipes are closed, still honouring the limits."""
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            _check_time(deadline, control, stage)


def _reap(proc: subprocess.Popen, tool: str) -> None:
    """Kill the process if it still runs and collect it, so no child (or zombie) is left."""
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # SIGKILL cannot be ignored; only a hung kernel gets here
            logger.warning("%s (pid %d) did not exit after SIGKILL", tool, proc.pid)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _failure(tool: str, returncode: int, stderr: str, display_name: str) -> AudioError:
    """The AudioError for a failed run: a refused container, or the tool's last words."""
    refused = _NOT_ON_WHITELIST.search(stderr)
    if refused:
        name = refused.group(1).strip()
        logger.info("%s refused %s: demuxer %r is not allowed", tool, display_name, name)
        # Only the demuxer's name, which the file's own bytes decide: nothing it references
        # was opened, so the answer is the same whether those paths exist or not.
        return AudioError(
            f"unsupported container '{name}': only plain audio/video files are accepted "
            "(WAV, FLAC, MP3, Ogg/Opus, M4A/MP4, WebM/MKV, ...), not playlists, manifests or file lists"
        )
    detail = trim_stderr(stderr, display_name)
    logger.info("%s failed on %s (rc=%d): %s", tool, display_name, returncode, detail)
    return AudioError(f"could not decode audio: {detail}")


def trim_stderr(stderr: str, display_name: str) -> str:
    """Last meaningful stderr line(s), with our temp paths shortened, capped at ~300 chars."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # The final line usually names the failure ("Invalid data found when processing input").
    text = " / ".join(lines[-2:])
    text = re.sub(r"file:\S*?" + re.escape(display_name), display_name, text)
    text = re.sub(r"\[[^\]]+ @ 0x[0-9a-f]+\] ", "", text)  # "[mov,mp4 @ 0x55..]" noise
    if len(text) > _STDERR_MAX_CHARS:
        text = text[: _STDERR_MAX_CHARS - 3] + "..."
    return text

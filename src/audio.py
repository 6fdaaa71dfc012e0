"""Turn a fetched audio file into 16 kHz mono float32 samples.

:func:`fetch.fetch_audio` first materialises the request's source (http(s) URL,
base64 payload or, when enabled, a local path) as a file in a per-request working
directory that the caller creates and deletes; then :func:`prepare_audio` probes
that file and either reads it directly (already a 16 kHz mono WAV/FLAC) or
decodes/resamples it with ffmpeg, reporting which path it took and why.

Both raise :class:`fetch.AudioError`, defined there so that fetching needs no numpy.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from fetch import AudioError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000
TARGET_CHANNELS = 1

# ffprobe only reads headers; ffmpeg decodes the whole file, which for a
# multi-hour recording can take a few minutes on a busy CPU.
FFPROBE_TIMEOUT_S = 60.0
FFMPEG_TIMEOUT_S = 1800.0

# Shortest audio accepted, in seconds: below this there is nothing to transcribe (a Whisper
# token spans 20 ms, a syllable ~0.1 s), and such a file is almost always a broken upload.
MIN_DURATION_S = 0.1
# A WAV counts as truncated when its data chunk declares more than the file holds by more
# than both of these (seconds, fraction of the declared length): some writers round the
# declared size or drop a pad byte, which must not fail a good file.
TRUNCATION_TOLERANCE_S = 0.1
TRUNCATION_TOLERANCE_FRACTION = 0.01
# RIFF chunk sizes that mean "length unknown" (streaming writers, RF64), not a real promise.
_RIFF_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF})
_RIFF_MAX_CHUNKS = 64  # chunks walked before the data chunk; real files have a handful

_STDERR_MAX_CHARS = 300
# Playlist/concatenation demuxers open further inputs named inside the file;
# a downloaded file must never make ffmpeg read other resources.
_REFUSED_FORMATS = frozenset({"hls", "applehttp", "concat", "ffconcat"})
# WAV/FLAC are the containers soundfile reads reliably and exactly; anything
# else (including MP3, which newer libsndfile can read) goes through ffmpeg
# so decoding behaves the same as in whisperX.
_DIRECT_FORMATS = frozenset({"WAV", "WAVEX", "FLAC"})
_SF_SUBTYPE_CODECS = {
    "PCM_U8": "pcm_u8",
    "PCM_S8": "pcm_s8",
    "PCM_16": "pcm_s16le",
    "PCM_24": "pcm_s24le",
    "PCM_32": "pcm_s32le",
    "FLOAT": "pcm_f32le",
    "DOUBLE": "pcm_f64le",
    "ULAW": "pcm_mulaw",
    "ALAW": "pcm_alaw",
}


@dataclass(frozen=True)
class AudioProbe:
    """What ffprobe/soundfile saw in the input (None where unknown)."""

    sample_rate: int | None  # Hz
    channels: int | None
    codec: str | None  # ffprobe codec name, e.g. "pcm_s16le", "mp3", "aac"
    container: str | None  # ffprobe format name, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    duration_s: float | None  # seconds, as declared by the container

    def as_dict(self) -> dict:
        """JSON-native dict of the fields."""
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "codec": self.codec,
            "container": self.container,
            "duration_s": None if self.duration_s is None else round(float(self.duration_s), 3),
        }


@dataclass(frozen=True)
class PreparedAudio:
    """Decoded audio ready for WhisperX, plus a record of how it was obtained."""

    waveform: np.ndarray  # float32, mono, 16 kHz, shape (n_samples,), values in [-1, 1]
    wav_path: Path  # 16 kHz mono PCM16 WAV of the same audio
    duration_s: float  # seconds, = n_samples / 16000
    is_compatible: bool  # input already 16 kHz mono (no resampling needed)
    expected: dict  # {"sample_rate": 16000, "channels": 1}
    actual: dict  # {"sample_rate", "channels", "codec", "container", "duration_s"} of the input
    used_fallback: bool  # ffmpeg was used to decode/resample
    source: str  # "url" | "base64" | "local"
    reason: str  # one sentence: why the fallback was or was not used

    def debug_dict(self) -> dict:
        """JSON-native summary for the response's debug section (no waveform)."""
        return {
            "is_compatible": bool(self.is_compatible),
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "used_fallback": bool(self.used_fallback),
            "source": self.source,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _FfprobeResult:
    """Private: the first audio stream's probe plus container facts."""

    probe: AudioProbe
    has_audio: bool
    has_video: bool  # a real video stream, not cover art


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def prepare_audio(path: Path, source: str, workdir: Path) -> PreparedAudio:
    """Probe; if 16 kHz mono WAV/FLAC read directly with soundfile, else decode+resample with ffmpeg.

    ffmpeg runs as ``ffmpeg -nostdin -i in -vn -ac 1 -ar 16000 -f wav out`` (first
    audio stream only), which also extracts audio from video containers. The
    result is a float32 16 kHz mono waveform plus a 16 kHz mono PCM16 WAV in
    ``workdir`` (or the input itself when it already is one).

    Refused with an ``AudioError`` naming the problem: an empty file, a WAV whose header
    promises clearly more audio than the file holds (truncated), audio with no samples, and
    audio shorter than ``MIN_DURATION_S`` (0.1 s).
    """
    path = Path(path)
    workdir = Path(workdir)
    try:
        size = path.stat().st_size
    except OSError:
        raise AudioError("audio file could not be read") from None
    if size == 0:
        raise AudioError("audio file is empty")
    _check_wav_not_truncated(path, size)

    prepared = _try_direct(path, source, workdir) or _decode_with_ffmpeg(path, source, workdir)
    _check_long_enough(prepared.duration_s)
    return prepared


def _check_long_enough(duration_s: float) -> None:
    """Refuse audio shorter than MIN_DURATION_S seconds (it would only give an empty transcript)."""
    if duration_s < MIN_DURATION_S:
        # Rounded down, so 0.0996 s never reads as "0.100 s (at least 0.1 s needed)".
        shown = math.floor(duration_s * 1000 + 1e-6) / 1000
        raise AudioError(f"audio is too short: {shown:.3f} s (at least {MIN_DURATION_S:g} s needed)")


@dataclass(frozen=True)
class _WavLayout:
    """Private: where a RIFF/WAVE file's samples are and how many its header promises."""

    declared_bytes: int  # the data chunk's size field
    present_bytes: int  # bytes after the data chunk header, up to the end of the file
    bytes_per_second: int  # the fmt chunk's average byte rate


def _read_wav_layout(path: Path, file_size: int) -> _WavLayout | None:
    """Walk a RIFF/WAVE file's chunks up to ``data``; None when it is not one, has no usable
    fmt/data chunk, or declares an unknown length (0 or 0xFFFFFFFF: streamed WAVs, RF64).

    Only headers are read (seeks over other chunks), so this costs the same for any size.
    """
    byte_rate = None
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not a little-endian WAV (RIFX, RF64, other formats): no promise to check
        for _ in range(_RIFF_MAX_CHUNKS):
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                if byte_rate is None or chunk_size in _RIFF_UNKNOWN_SIZES:
                    return None
                return _WavLayout(chunk_size, max(0, file_size - f.tell()), byte_rate)
            if chunk_id == b"fmt " and chunk_size >= 16:
                fmt = f.read(16)
                if len(fmt) < 16:
                    return None
                byte_rate = int.from_bytes(fmt[8:12], "little") or None
                f.seek(chunk_size - 16 + (chunk_size & 1), os.SEEK_CUR)
            else:
                f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _check_wav_not_truncated(path: Path, file_size: int) -> None:
    """Refuse a WAV whose header promises clearly more audio than the file holds (a cut
    download or upload): decoding it would give a few ms and a misleading empty transcript."""
    layout = _read_wav_layout(path, file_size)
    if layout is None:
        return
    declared_s = layout.declared_bytes / layout.bytes_per_second
    present_s = min(layout.present_bytes, layout.declared_bytes) / layout.bytes_per_second
    missing_s = declared_s - present_s
    if missing_s > TRUNCATION_TOLERANCE_S and missing_s > TRUNCATION_TOLERANCE_FRACTION * declared_s:
        promised = f"{declared_s:.1f}" if declared_s >= 1 else f"{declared_s:.3f}"
        raise AudioError(f"audio file is truncated: the WAV header promises {promised} s but the file holds {present_s:.3f} s")


def _expected() -> dict:
    """The format WhisperX wants: 16 kHz mono."""
    return {"sample_rate": TARGET_SAMPLE_RATE, "channels": TARGET_CHANNELS}


def _is_target_format(probe: AudioProbe) -> bool:
    """True if the probed stream is already 16 kHz mono."""
    return probe.sample_rate == TARGET_SAMPLE_RATE and probe.channels == TARGET_CHANNELS


def _try_direct(path: Path, source: str, workdir: Path) -> PreparedAudio | None:
    """Read a 16 kHz mono WAV/FLAC with soundfile; None if the input needs ffmpeg."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None  # not something libsndfile knows: let ffprobe/ffmpeg decide
    if info.format not in _DIRECT_FORMATS or info.samplerate != TARGET_SAMPLE_RATE or info.channels != 1:
        return None
    try:
        samples, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        logger.info("soundfile could not read %s (%s); falling back to ffmpeg", path.name, exc)
        return None

    probe = AudioProbe(
        sample_rate=info.samplerate,
        channels=info.channels,
        codec="flac" if info.format == "FLAC" else _SF_SUBTYPE_CODECS.get(info.subtype, info.subtype.lower()),
        container="flac" if info.format == "FLAC" else "wav",
        duration_s=float(info.frames) / info.samplerate,
    )
    waveform = _finish_waveform(samples)
    if info.format in ("WAV", "WAVEX") and info.subtype == "PCM_16":
        wav_path = path  # already exactly what path-based tools want
    else:
        # FLAC or non-PCM16 WAV: tools expecting a PCM16 WAV get a copy (no resampling).
        wav_path = workdir / "audio_16k.wav"
        sf.write(str(wav_path), waveform, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    kind = "FLAC" if info.format == "FLAC" else "WAV"
    return PreparedAudio(
        waveform=waveform,
        wav_path=wav_path,
        duration_s=waveform.shape[0] / TARGET_SAMPLE_RATE,
        is_compatible=True,
        expected=_expected(),
        actual=probe.as_dict(),
        used_fallback=False,
        source=source,
        reason=f"input is already 16 kHz mono {kind}: read directly with soundfile, no ffmpeg needed",
    )


def _finish_waveform(samples: np.ndarray) -> np.ndarray:
    """Make samples a contiguous float32 1-D array in [-1, 1]; raise if there are none."""
    waveform = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if waveform.size == 0:
        raise AudioError("audio has no samples")
    # Float WAVs may exceed full scale; clip rather than let the model see >1.0.
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return waveform


def _decode_with_ffmpeg(path: Path, source: str, workdir: Path) -> PreparedAudio:
    """Probe with ffprobe, then decode the first audio stream to 16 kHz mono PCM16 WAV and read it."""
    probed = _ffprobe(path)
    if not probed.has_audio:
        container = probed.probe.container or "unknown"
        if probed.has_video:
            raise AudioError(f"no audio stream found in the video (container: {container})")
        raise AudioError(f"could not decode audio: no audio stream found (detected format: {container})")
    if probed.probe.container in _REFUSED_FORMATS:
        raise AudioError(f"unsupported input: {probed.probe.container} playlists are not accepted")

    wav_path = workdir / "audio_16k.wav"
    _run_tool(
        [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            # Only plain files may be opened, so a crafted input cannot make ffmpeg fetch URLs.
            "-protocol_whitelist", "file",
            "-i", f"file:{path.resolve()}",
            "-map", "0:a:0",  # the stream ffprobe reported, not ffmpeg's own pick
            "-vn", "-sn", "-dn", "-map_metadata", "-1",
            "-ac", str(TARGET_CHANNELS), "-ar", str(TARGET_SAMPLE_RATE),
            "-c:a", "pcm_s16le", "-f", "wav",
            f"file:{wav_path.resolve()}",
        ],
        timeout_s=FFMPEG_TIMEOUT_S,
        display_name=path.name,
    )
    try:
        samples, rate = sf.read(str(wav_path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError):
        # ffmpeg writes only a header when it decodes nothing; libsndfile may reject that.
        raise AudioError("audio has no samples") from None
    if rate != TARGET_SAMPLE_RATE:  # would be an ffmpeg bug; never hand the model wrong-rate audio
        raise AudioError(f"could not decode audio: ffmpeg produced {rate} Hz instead of 16000 Hz")
    waveform = _finish_waveform(samples)
    probe = probed.probe
    return PreparedAudio(
        waveform=waveform,
        wav_path=wav_path,
        duration_s=waveform.shape[0] / TARGET_SAMPLE_RATE,
        is_compatible=_is_target_format(probe),
        expected=_expected(),
        actual=probe.as_dict(),
        used_fallback=True,
        source=source,
        reason=_fallback_reason(probe, probed.has_video),
    )


def _fallback_reason(probe: AudioProbe, has_video: bool) -> str:
    """One sentence on why ffmpeg was needed for this input."""
    rate = f"{probe.sample_rate} Hz" if probe.sample_rate else "unknown sample rate"
    channels = probe.channels
    layout = "mono" if channels == 1 else (f"{channels} channels" if channels else "unknown channels")
    codec = probe.codec or "unknown codec"
    if not _is_target_format(probe):
        action = "resampled/downmixed to 16 kHz mono with ffmpeg"
        if has_video:
            action = "audio extracted and " + action
        return f"input is {rate}, {layout} ({codec}): {action}"
    if has_video:
        return f"input is a video container ({probe.container}) with 16 kHz mono {codec} audio: extracted with ffmpeg"
    return f"input is 16 kHz mono but {codec} in {probe.container}, not WAV/FLAC: decoded with ffmpeg"


def _ffprobe(path: Path) -> _FfprobeResult:
    """Describe the file's first audio stream and container with ffprobe (JSON output)."""
    stdout = _run_tool(
        [
            "ffprobe", "-v", "error", "-protocol_whitelist", "file",
            "-show_entries",
            "stream=codec_type,codec_name,sample_rate,channels,duration:stream_disposition=attached_pic"
            ":format=format_name,duration",
            "-of", "json",
            f"file:{path.resolve()}",
        ],
        timeout_s=FFPROBE_TIMEOUT_S,
        display_name=path.name,
    )
    try:
        info = json.loads(stdout or "{}")
    except json.JSONDecodeError:
        raise AudioError("could not decode audio: unreadable ffprobe output") from None
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    container = fmt.get("format_name")
    has_video = not _is_still_or_text_format(container) and any(
        s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
        for s in streams
    )
    stream = audio or {}
    duration = _to_float(stream.get("duration"))
    if duration is None:
        duration = _to_float(fmt.get("duration"))  # e.g. Matroska keeps it on the container only
    probe = AudioProbe(
        sample_rate=_to_int(stream.get("sample_rate")),
        channels=_to_int(stream.get("channels")),
        codec=stream.get("codec_name"),
        container=container,
        duration_s=duration,
    )
    return _FfprobeResult(probe=probe, has_audio=audio is not None, has_video=has_video)


def _is_still_or_text_format(container: str | None) -> bool:
    """True for demuxers that turn images or text into a 'video' stream (e.g. .txt -> tty).

    Such inputs are not videos; calling them that would mislead the user.
    """
    if not container:
        return False
    return container in ("tty", "image2") or container.endswith("_pipe")


def _to_int(value: object) -> int | None:
    """ffprobe numbers arrive as strings or ints; None if absent or unparsable."""
    try:
        return int(value) if value not in (None, "", "N/A") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _to_float(value: object) -> float | None:
    """Parse an ffprobe float (seconds); None if absent or unparsable."""
    try:
        return float(value) if value not in (None, "", "N/A") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _run_tool(args: list[str], timeout_s: float, display_name: str) -> str:
    """Run ffmpeg/ffprobe (argument list, no shell, no stdin) and return stdout.

    Failures become AudioError("could not decode audio: ...") with a short stderr excerpt.
    """
    tool = args[0]
    try:
        completed = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AudioError(f"could not decode audio: {tool} timed out after {timeout_s:g} s") from None
    except FileNotFoundError:
        # A missing binary is a deployment bug, not the user's fault.
        raise RuntimeError(f"{tool} is not installed or not on PATH") from None
    if completed.returncode != 0:
        detail = _trim_stderr(completed.stderr, display_name)
        logger.info("%s failed on %s (rc=%d): %s", tool, display_name, completed.returncode, detail)
        raise AudioError(f"could not decode audio: {detail}")
    return completed.stdout


def _trim_stderr(stderr: str, display_name: str) -> str:
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

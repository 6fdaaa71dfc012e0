"""Turn a fetched audio file into 16 kHz mono float32 samples, within bounds.

:func:`fetch.fetch_audio` first materialises the request's source (http(s) URL,
base64 payload or, when enabled, a local path) as a file in a per-request working
directory that the caller creates and deletes; then :func:`prepare_audio` probes
that file and either reads it directly (already a 16 kHz mono WAV/FLAC) or
decodes/resamples it with ffmpeg, reporting which path it took and why.

The file is hostile until proven otherwise. Contract of :func:`prepare_audio`:

* Length: audio over ``max_audio_seconds`` (0 = no cap) is refused from its metadata
  (the WAV header's data size / byte rate, libsndfile's frame count, ffprobe's duration)
  before any decoding, and again while decoding: ffmpeg's output is streamed and never
  kept past the cap (plus one pipe chunk), so a header that lies costs at most that much.
* No array is sized from a header number that was not checked against the cap and the
  file's size; absurd sample rates (outside 1 kHz..768 kHz) are refused.
* ffprobe/ffmpeg read only the one file, with a demuxer from :data:`ffmpeg_tools.INPUT_FORMATS`
  (no playlist, manifest or file-list demuxer can open other inputs), without stdin, in
  ``workdir``; see :mod:`ffmpeg_tools`.
* ``control`` (a :class:`job_control.JobControl`) bounds every step: a cancelled or expired job
  raises its ``JobCancelled``/``JobTimeout`` and the running tool is killed within ~0.1 s.
* Every bad input ends as an :class:`fetch.AudioError` (defined there so that fetching
  needs no numpy) with a short message; peak memory is about one float32 copy of the audio.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from job_control import JobControl
from stages import ffmpeg_tools
from stages.fetch import AudioError
from stages.ffmpeg_tools import run_tool as _run_tool  # module-level name: tests replace it

logger = logging.getLogger("audio")  # the bare name: log lines read as before the move

TARGET_SAMPLE_RATE = 16_000
TARGET_CHANNELS = 1

# ffprobe only reads headers; ffmpeg decodes the whole file, which for a
# multi-hour recording can take a few minutes on a busy CPU. The job's own
# time budget (JobControl.remaining) shortens both.
FFPROBE_TIMEOUT_S = 60.0
FFMPEG_TIMEOUT_S = 1800.0

# Longest audio accepted when the caller names no limit (the worker passes its
# MAX_AUDIO_SECONDS setting): hosted ASR APIs accept 4-10 hours per file.
DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600.0
# Metadata and resamplers round (encoder padding, a few extra output samples): a file
# exactly at the limit must pass, so the limit gets this much slack in both checks.
DURATION_SLACK_S = 0.5
# Sample rates a real recording can have; a header outside them is broken or hostile
# (1 Hz upsampled to 16 kHz turns a 5 KB file into gigabytes).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000

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

# The most samples per byte any direct-read format can hold: a FLAC frame of digital silence
# needs >= 12 bytes for at most 65535 samples (~5500/byte). A frame count above this times the
# file size is a lie, and is never used to size an array.
_MAX_SAMPLES_PER_BYTE = 8192
# Frames read per soundfile call on the direct path, so a stopped job is noticed between blocks.
_DIRECT_BLOCK_FRAMES = 1 << 20  # ~65 s at 16 kHz
_STAGE = "audio decoding"  # what JobCancelled/JobTimeout name
_ESTIMATED_DURATION = "Estimating duration from bitrate"  # ffprobe's warning: not a promise
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
    duration_estimated: bool  # ffprobe guessed the duration from the bitrate (may be far off)


@dataclass(frozen=True)
class _Limits:
    """Private: how much audio this job may decode, and the control that may stop it."""

    max_seconds: float  # 0 (or inf) = no cap
    control: JobControl | None
    limit_name: str = "MAX_AUDIO_SECONDS"  # how errors name the cap

    @property
    def capped(self) -> bool:
        return 0 < self.max_seconds < math.inf

    @property
    def max_samples(self) -> int | None:
        """Most 16 kHz samples kept (the cap plus DURATION_SLACK_S); None without a cap."""
        if not self.capped:
            return None
        return math.ceil((self.max_seconds + DURATION_SLACK_S) * TARGET_SAMPLE_RATE)

    def check_duration(self, duration_s: float | None) -> None:
        """Refuse audio whose metadata says it is over the cap, before decoding any of it."""
        if self.capped and duration_s is not None and duration_s > self.max_seconds + DURATION_SLACK_S:
            raise AudioError(
                f"audio is {duration_s:.1f} s long, over this worker's limit of "
                f"{self.max_seconds:g} s ({self.limit_name})"
            )

    def too_long(self) -> AudioError:
        """The error for audio found to be over the cap while decoding (its length is unknown)."""
        return AudioError(f"audio is longer than this worker's limit of {self.max_seconds:g} s ({self.limit_name})")

    def check(self) -> None:
        """Raise JobCancelled/JobTimeout if the job must stop."""
        if self.control is not None:
            self.control.check(_STAGE)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def prepare_audio(
    path: Path,
    source: str,
    workdir: Path,
    *,
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    control: JobControl | None = None,
    limit_name: str = "MAX_AUDIO_SECONDS",
) -> PreparedAudio:
    """Probe; if 16 kHz mono WAV/FLAC read directly with soundfile, else decode+resample with ffmpeg.

    ffmpeg decodes the first audio stream to 16 kHz mono PCM16 (which also extracts audio
    from video containers), streamed through a pipe into a WAV in ``workdir``. The result is
    a float32 16 kHz mono waveform plus that WAV (or the input itself when it already is one).

    ``max_audio_seconds``: longest audio accepted (0 = no limit), named ``limit_name`` in
    errors. ``control``: the job's
    deadline and cancel token (None = unbounded); stopping raises its JobCancelled/JobTimeout.

    Refused with an ``AudioError`` naming the problem: an empty file, a WAV whose header
    promises clearly more audio than the file holds (truncated), an absurd sample rate, a
    container outside the allow-list (playlists, manifests, file lists), audio over
    ``max_audio_seconds``, audio with no samples, and audio shorter than ``MIN_DURATION_S``.
    """
    if math.isnan(max_audio_seconds) or max_audio_seconds < 0:
        raise ValueError(f"max_audio_seconds must be >= 0 (0 = no limit), not {max_audio_seconds!r}")
    limits = _Limits(float(max_audio_seconds), control, limit_name)
    limits.check()
    path = Path(path)
    workdir = Path(workdir)
    try:
        size = path.stat().st_size
    except OSError:
        raise AudioError("audio file could not be read") from None
    if size == 0:
        raise AudioError("audio file is empty")
    _check_wav_header(path, size, limits)

    prepared = _try_direct(path, source, workdir, size, limits) or _decode_with_ffmpeg(path, source, workdir, limits)
    _check_long_enough(prepared.duration_s)
    return prepared


def _check_long_enough(duration_s: float) -> None:
    """Refuse audio shorter than MIN_DURATION_S seconds (it would only give an empty transcript)."""
    if duration_s < MIN_DURATION_S:
        # Rounded down, so 0.0996 s never reads as "0.100 s (at least 0.1 s needed)".
        shown = math.floor(duration_s * 1000 + 1e-6) / 1000
        raise AudioError(f"audio is too short: {shown:.3f} s (at least {MIN_DURATION_S:g} s needed)")


def _check_sample_rate(rate: int) -> None:
    """Refuse a sample rate no recording has (resampling 1 Hz to 16 kHz multiplies data 16000x)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"unsupported sample rate: {rate} Hz (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)")


@dataclass(frozen=True)
class _WavLayout:
    """Private: a RIFF/WAVE file's format and where its samples are."""

    declared_bytes: int | None  # the data chunk's size field; None = "unknown" (streamed WAV, RF64)
    present_bytes: int  # bytes after the data chunk header, up to the end of the file
    bytes_per_second: int | None  # the fmt chunk's average byte rate; None when 0
    sample_rate: int  # the fmt chunk's sample rate


def _read_wav_layout(path: Path, file_size: int) -> _WavLayout | None:
    """Walk a RIFF/WAVE file's chunks up to ``data``; None when it is not one or has no
    fmt chunk before a data chunk.

    Only headers are read (seeks over other chunks), so this costs the same for any size.
    """
    fmt = None
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
                if fmt is None:
                    return None
                return _WavLayout(
                    declared_bytes=None if chunk_size in _RIFF_UNKNOWN_SIZES else chunk_size,
                    present_bytes=max(0, file_size - f.tell()),
                    bytes_per_second=int.from_bytes(fmt[8:12], "little") or None,
                    sample_rate=int.from_bytes(fmt[4:8], "little"),
                )
            if chunk_id == b"fmt " and chunk_size >= 16:
                fmt = f.read(16)
                if len(fmt) < 16:
                    return None
                f.seek(chunk_size - 16 + (chunk_size & 1), os.SEEK_CUR)
            else:
                f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _check_wav_header(path: Path, file_size: int, limits: _Limits) -> None:
    """Refuse a WAV with an absurd sample rate, a truncated one, and one over the length cap,
    from its header alone."""
    layout = _read_wav_layout(path, file_size)
    if layout is None:
        return
    _check_sample_rate(layout.sample_rate)
    if layout.bytes_per_second is None:
        return
    if layout.declared_bytes is not None:
        _check_wav_not_truncated(layout.declared_bytes, layout.present_bytes, layout.bytes_per_second)
        present = min(layout.present_bytes, layout.declared_bytes)
    else:
        present = layout.present_bytes
    limits.check_duration(present / layout.bytes_per_second)


def _check_wav_not_truncated(declared_bytes: int, present_bytes: int, bytes_per_second: int) -> None:
    """Refuse a WAV whose header promises clearly more audio than the file holds (a cut
    download or upload): decoding it would give a few ms and a misleading empty transcript."""
    declared_s = declared_bytes / bytes_per_second
    present_s = min(present_bytes, declared_bytes) / bytes_per_second
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


def _try_direct(path: Path, source: str, workdir: Path, file_size: int, limits: _Limits) -> PreparedAudio | None:
    """Read a 16 kHz mono WAV/FLAC with soundfile; None if the input needs ffmpeg."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None  # not something libsndfile knows: let ffprobe/ffmpeg decide
    if info.format not in _DIRECT_FORMATS or info.samplerate != TARGET_SAMPLE_RATE or info.channels != 1:
        return None
    if not 0 <= info.frames <= file_size * _MAX_SAMPLES_PER_BYTE:
        # E.g. a FLAC whose STREAMINFO claims 2^36 samples (or "unknown"): never size an array
        # from it. ffmpeg's streamed decode counts the real samples under the same cap.
        logger.info("%s claims %d frames in %d bytes; decoding with ffmpeg", path.name, info.frames, file_size)
        return None
    limits.check_duration(info.frames / info.samplerate)
    samples = _read_frames(path, info.frames, limits)
    if samples is None:
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


def _read_frames(path: Path, frames: int, limits: _Limits) -> np.ndarray | None:
    """Read up to ``frames`` (already checked against the cap and the file size) mono float32
    samples, block by block so a stopped job is noticed; None if libsndfile fails (ffmpeg may
    still decode the file)."""
    try:
        out = np.empty(frames, dtype=np.float32)  # filled in place: one copy of the audio
    except MemoryError:
        raise AudioError(f"audio is too long for this worker's memory ({frames / TARGET_SAMPLE_RATE:.1f} s)") from None
    filled = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while filled < frames:
                limits.check()
                wanted = min(_DIRECT_BLOCK_FRAMES, frames - filled)
                got = f.read(out=out[filled : filled + wanted]).shape[0]
                filled += got
                if got < wanted:  # the header promised more than the file holds
                    break
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        logger.info("soundfile could not read %s (%s); falling back to ffmpeg", path.name, exc)
        return None
    return out[:filled]


def _finish_waveform(samples: np.ndarray) -> np.ndarray:
    """Make samples a contiguous float32 1-D array in [-1, 1]; raise if there are none."""
    waveform = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if waveform.size == 0:
        raise AudioError("audio has no samples")
    # Float WAVs may exceed full scale; clip rather than let the model see >1.0.
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return waveform


def _decode_with_ffmpeg(path: Path, source: str, workdir: Path, limits: _Limits) -> PreparedAudio:
    """Probe with ffprobe, check what it says, then decode the first audio stream to 16 kHz mono."""
    probed = _ffprobe(path, workdir, limits)
    probe = probed.probe
    if not probed.has_audio:
        container = probe.container or "unknown"
        if probed.has_video:
            raise AudioError(f"no audio stream found in the video (container: {container})")
        raise AudioError(f"could not decode audio: no audio stream found (detected format: {container})")
    if probe.sample_rate:  # 0/None: unknown to ffprobe, left to ffmpeg (and the streamed cap)
        _check_sample_rate(probe.sample_rate)
    if not probed.duration_estimated:  # a bitrate guess can be far off; decoding will tell
        limits.check_duration(probe.duration_s)

    wav_path = workdir / "audio_16k.wav"
    _decode_to_wav(path, wav_path, workdir, limits)
    samples, _ = sf.read(str(wav_path), dtype="float32", always_2d=False)  # our own header: trusted
    waveform = _finish_waveform(samples)
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


class _PcmSpool:
    """Private: ffmpeg's s16le stream, written as it arrives to a 16 kHz mono PCM16 WAV.

    Nothing past ``max_samples`` is ever kept: the chunk that would cross it raises instead,
    which stops ffmpeg. On disk, not in memory, so a legitimate file needs RAM only for the
    final float32 read.
    """

    def __init__(self, wav_path: Path, limits: _Limits) -> None:
        self._limits = limits
        self._max_samples = limits.max_samples
        self._carry = b""  # an odd byte split between two pipe reads
        self.samples = 0
        self._file = sf.SoundFile(
            str(wav_path), mode="w", samplerate=TARGET_SAMPLE_RATE, channels=TARGET_CHANNELS,
            subtype="PCM_16", format="WAV",
        )

    def write(self, data: bytes) -> None:
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        n = usable // 2
        if self._max_samples is not None and self.samples + n > self._max_samples:
            raise self._limits.too_long()
        # int16 into a PCM_16 file: written exactly, the same bits ffmpeg's own WAV would hold.
        self._file.write(np.frombuffer(data, dtype="<i2", count=n))
        self.samples += n

    def close(self) -> None:
        self._file.close()


def _decode_to_wav(path: Path, wav_path: Path, workdir: Path, limits: _Limits) -> None:
    """Decode the first audio stream with ffmpeg to 16 kHz mono PCM16, streamed into ``wav_path``.

    s16le, not f32le, on the pipe: the samples are exactly those of the WAV that tools read,
    and of whisperX's own loader. Raises (and removes the partial WAV) when the audio is
    over the cap, has no samples, or the job stops.
    """
    spool = _PcmSpool(wav_path, limits)
    try:
        _run_tool(
            [
                "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                *ffmpeg_tools.input_args(path),
                "-map", "0:a:0",  # the stream ffprobe reported, not ffmpeg's own pick
                "-vn", "-sn", "-dn", "-map_metadata", "-1",
                "-ac", str(TARGET_CHANNELS), "-ar", str(TARGET_SAMPLE_RATE),
                "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1",
            ],
            cwd=workdir,
            timeout_s=FFMPEG_TIMEOUT_S,
            display_name=path.name,
            control=limits.control,
            stage=_STAGE,
            on_stdout=spool.write,
        )
        if spool.samples == 0:
            raise AudioError("audio has no samples")
    except BaseException:
        spool.close()
        wav_path.unlink(missing_ok=True)
        raise
    spool.close()


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


def _ffprobe(path: Path, workdir: Path, limits: _Limits) -> _FfprobeResult:
    """Describe the file's first audio stream and container with ffprobe (JSON output)."""
    output = _run_tool(
        [
            "ffprobe", "-v", "warning", "-hide_banner",  # warning: to see "Estimating duration"
            "-show_entries",
            "stream=codec_type,codec_name,sample_rate,channels,duration:stream_disposition=attached_pic"
            ":format=format_name,duration",
            "-of", "json",
            *ffmpeg_tools.input_args(path),
        ],
        cwd=workdir,
        timeout_s=FFPROBE_TIMEOUT_S,
        display_name=path.name,
        control=limits.control,
        stage=_STAGE,
    )
    try:
        info = json.loads(output.stdout or b"{}")
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
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
    return _FfprobeResult(
        probe=probe,
        has_audio=audio is not None,
        has_video=has_video,
        duration_estimated=_ESTIMATED_DURATION in output.stderr,
    )


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
    """Parse an ffprobe float (seconds); None if absent, unparsable or not finite."""
    try:
        number = float(value) if value not in (None, "", "N/A") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None

"""Hostile audio files written byte by byte: headers that lie, playlists and manifests that
name other files. Shared by tests/unit/test_hostile_audio.py and the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

def wav(rate: int, channels: int, data_bytes: int, byte_rate: int | None = None) -> bytes:
    """A PCM16 RIFF/WAVE file with the given header values and ``data_bytes`` of a tone."""
    block = 2 * channels
    fmt = (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little") \
        + (byte_rate if byte_rate is not None else rate * block).to_bytes(4, "little") \
        + block.to_bytes(2, "little") + (16).to_bytes(2, "little")
    tone = (np.sin(np.arange(data_bytes // 2) / 3.0) * 8000).astype("<i2").tobytes()
    body = b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(tone).to_bytes(4, "little") + tone
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body


def set_flac_total_samples(path: Path, total: int) -> None:
    """Overwrite STREAMINFO's 36-bit total-samples field (bytes 18..25 hold rate/channels/bits/total)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def hls(target: str) -> str:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:3.0,\n{target}\n#EXT-X-ENDLIST\n"
    )


def dash(target: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT3S" '
        'minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">\n'
        '<Period><AdaptationSet mimeType="audio/mp4" codecs="mp4a.40.2">'
        '<Representation id="a" bandwidth="128000" audioSamplingRate="44100">'
        f"<BaseURL>{target}</BaseURL></Representation></AdaptationSet></Period></MPD>\n"
    )


def concat(target: str) -> str:
    return f"ffconcat version 1.0\nfile '{target}'\n"

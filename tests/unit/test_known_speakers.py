"""Known speakers (src/stages/known_speakers.py and the request fields that carry them): the
request rules, loading samples with real ffmpeg, and the pairing of names with speakers."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import openai_shapes
import rp_schema
from rp_schema import ValidationError, resolve_options
from stages import fetch, known_speakers
from stages.fetch import FetchPolicy
from stages.speaker_assignment import SpeakerTurn

AUDIO = {"audio_file": "https://example.com/a.wav"}


def _wav_data_url(seconds: float, rate: int = 16000) -> str:
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _resolve(**fields):
    return resolve_options({**AUDIO, **fields}, {})


# ---------------------------------------------------------------- request rules
def test_names_and_samples_arrive_as_lists_or_form_names():
    options = _resolve(**{"known_speaker_names[]": ["Ann", " Bob "], "known_speaker_references[]": ["x" * 300, "y" * 300]})
    assert options.known_speaker_names == ("Ann", "Bob")
    assert options.known_speaker_references == ("x" * 300, "y" * 300)
    one = _resolve(known_speaker_names="Ann", known_speaker_references="x" * 300)
    assert one.known_speaker_names == ("Ann",)


@pytest.mark.parametrize("fields, field, words", [
    ({"known_speaker_names": ["Ann"]}, "known_speaker_references", "needs known_speaker_references"),
    ({"known_speaker_references": ["x"]}, "known_speaker_names", "needs known_speaker_names"),
    ({"known_speaker_names": ["Ann", "Bob"], "known_speaker_references": ["x"]}, "known_speaker_references",
     "one sample per name"),
    ({"known_speaker_names": ["Ann", "Ann"], "known_speaker_references": ["x", "y"]}, "known_speaker_names", "once"),
    ({"known_speaker_names": ["SPEAKER_01"], "known_speaker_references": ["x"]}, "known_speaker_names",
     "diarizer's own labels"),
    ({"known_speaker_names": ["A" * 65], "known_speaker_references": ["x"]}, "known_speaker_names", "longer than 64"),
    ({"known_speaker_names": list("abcde"), "known_speaker_references": list("vwxyz")}, "known_speaker_names",
     "more than the 4 allowed"),
    ({"known_speaker_names": ["Ann", ""], "known_speaker_references": ["x", "y"]}, "known_speaker_names", "non-empty"),
    ({"known_speaker_names": [1], "known_speaker_references": ["x"]}, "known_speaker_names", "list of strings"),
    ({"known_speaker_names": ["Ann"], "known_speaker_references": ["x"], "diarization": False}, "known_speaker_names",
     "needs diarization=true"),
    ({"known_speaker_names": ["Ann\x00"], "known_speaker_references": ["x"]}, "known_speaker_names", "NUL"),
])
def test_bad_known_speakers_name_the_field(fields, field, words):
    with pytest.raises(ValidationError) as caught:
        _resolve(**fields)
    assert caught.value.field == field and words in str(caught.value)


def test_samples_are_not_logged():
    link = "https://user:pw@example.com/ann.wav?X-Amz-Signature=secret"
    options = _resolve(known_speaker_names=["Ann", "Bob"], known_speaker_references=[link, "Q" * 5000])
    shown = options.to_dict()["known_speaker_references"]
    assert shown == ["https://***@example.com/ann.wav?***", "<inline audio, 5000 chars>"]
    assert "secret" not in repr(options) and "QQQQ" not in repr(options)


# ---------------------------------------------------------------- loading samples
def test_samples_load_from_data_urls_and_base64(tmp_path: Path):
    bare = _wav_data_url(2.5).split(",", 1)[1]
    waveforms = known_speakers.load_references([_wav_data_url(3.0), bare], tmp_path, FetchPolicy())
    assert [round(len(w) / 16000, 2) for w in waveforms] == [3.0, 2.5]


@pytest.mark.parametrize("reference, words", [
    ("data:audio/wav;base64,@@@@", "known_speaker_references[1]: not valid base64"),
    ("https://127.0.0.1/ann.wav", "known_speaker_references[1]: refused URL host"),
    ("/etc/passwd", "known_speaker_references[1]: local paths are disabled"),
])
def test_a_bad_sample_is_named_by_its_index(tmp_path: Path, reference: str, words: str):
    with pytest.raises(fetch.AudioError) as caught:
        known_speakers.load_references([_wav_data_url(3.0), reference], tmp_path, FetchPolicy())
    assert words in str(caught.value)


def test_samples_too_short_or_too_long_are_refused(tmp_path: Path):
    with pytest.raises(fetch.AudioError, match=r"known_speaker_references\[0\]: the sample is 0.50 s long"):
        known_speakers.load_references([_wav_data_url(0.5)], tmp_path, FetchPolicy())
    with pytest.raises(fetch.AudioError, match=r"known_speaker_references\[0\]: audio is 40.0 s long, over .* "
                                               r"30 s \(the known speaker sample limit\)"):
        known_speakers.load_references([_wav_data_url(40.0, rate=8000)], tmp_path, FetchPolicy())


# ---------------------------------------------------------------- pairing names with speakers
def _unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=float)
    return list(vector / np.linalg.norm(vector))


def test_names_pair_one_to_one_with_the_best_total_similarity():
    centroids = {"SPEAKER_00": _unit(1, 0, 0), "SPEAKER_01": _unit(0.8, 0.6, 0)}
    # Both samples resemble SPEAKER_00 most (Bob: 0.95 vs 0.947); one name per speaker, so Bob
    # gets SPEAKER_01, the pairing with the best total similarity.
    samples = np.asarray([_unit(1, 0, 0), _unit(0.95, 0.31, 0)])
    naming = known_speakers.name_speakers(["Ann", "Bob"], samples, centroids, 0.6)
    assert naming.names == {"SPEAKER_00": "Ann", "SPEAKER_01": "Bob"} and naming.warnings == []


def test_a_sample_below_the_threshold_names_nobody():
    centroids = {"SPEAKER_00": _unit(1, 0, 0), "SPEAKER_01": _unit(0, 1, 0)}
    naming = known_speakers.name_speakers(["Ann", "Eve"], np.asarray([_unit(1, 0.1, 0), _unit(0, 0, 1)]), centroids, 0.6)
    assert naming.names == {"SPEAKER_00": "Ann"}
    assert naming.similarities["Eve"] == pytest.approx(0.0, abs=1e-9)
    assert naming.warnings == ["known speaker 'Eve' was not recognised (closest voice: cosine similarity 0.00, "
                               "0.6 needed); that speaker keeps its label"]


def test_no_speakers_or_empty_embeddings_name_nobody():
    naming = known_speakers.name_speakers(["Ann"], np.asarray([_unit(1, 0)]), {}, 0.6)
    assert naming.names == {} and "found no speakers" in naming.warnings[0]
    naming = known_speakers.name_speakers(["Ann"], np.asarray([[np.nan, np.nan]]), {"SPEAKER_00": [0.0, 0.0]}, -0.5)
    assert naming.names == {} and naming.similarities == {"Ann": -1.0}


def test_rename_keeps_times_and_unnamed_labels():
    turns = [SpeakerTurn(0.0, 1.0, "SPEAKER_00"), SpeakerTurn(1.0, 2.0, "SPEAKER_01")]
    assert known_speakers.rename(turns, {"SPEAKER_01": "Bob"}) == [SpeakerTurn(0.0, 1.0, "SPEAKER_00"),
                                                                   SpeakerTurn(1.0, 2.0, "Bob")]


def test_openai_letters_skip_known_names():
    segments = [{"speaker": "SPEAKER_00"}, {"speaker": "A"}, {"speaker": "SPEAKER_02"}, {"speaker": "Bob"}]
    letters = openai_shapes.speaker_letters(segments, names=("A", "Bob"))
    assert letters == {"SPEAKER_00": "B", "A": "A", "SPEAKER_02": "C", "Bob": "Bob"}


def test_schema_lists_the_known_speaker_fields():
    entry = rp_schema.INPUT_SCHEMA["known_speaker_references"]
    assert entry["type"] is tuple and entry["max_items"] == 4 and "known_speaker_references[]" in entry["aliases"]


def test_longest_spans_take_the_longest_first_and_cut_the_last():
    from stages.speaker_assignment import longest_spans

    spans = [(0.0, 1.0), (2.0, 7.0), (10.0, 13.0), (20.0, 20.5)]
    assert longest_spans(spans, 7.0) == [(2.0, 7.0), (10.0, 12.0)]
    assert longest_spans(spans, 100.0) == sorted(spans)
    assert longest_spans([], 5.0) == []


def test_a_dripping_or_cancelled_sample_link_stops_with_the_job(tmp_path: Path):
    """A sample link that sends a byte a second ends at the job's deadline; a cancelled job
    fetches nothing."""
    import job_control
    from fixtures_audio import HostileServer

    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(16000 * 2, dtype=np.float32), 16000, subtype="PCM_16")
    policy = FetchPolicy(allow_private_urls=True)
    with HostileServer({"clip.wav": clip}) as server:
        with pytest.raises(job_control.JobTimeout, match="download"):  # not the 64 KB at a byte a second
            known_speakers.load_references([server.url("drip")], tmp_path / "a", policy, job_control.JobControl(2.0))
        cancelled = job_control.JobControl()
        cancelled.cancel("cancelled by a test")
        with pytest.raises(job_control.JobCancelled):
            known_speakers.load_references([server.url("drip")], tmp_path / "b", policy, cancelled)
        assert server.hits.get("/drip", 0) == 1

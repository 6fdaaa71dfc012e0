"""transcript.response_dict: the Predictor's Transcript rendered as today's response, key for
key and in the same order (the keys clients and the SDK's JSON see)."""

from transcript import Transcript, response_dict


def test_a_plain_transcript_has_the_four_keys_then_output_format():
    t = Transcript([{"start": 0.0, "end": 1.0, "text": "привет"}], "ru", 0.98, [], "json")
    assert list(response_dict(t)) == ["segments", "detected_language", "language_probability", "warnings", "output_format"]
    assert response_dict(t)["segments"] is t.segments and response_dict(t)["warnings"] is t.warnings


def test_optional_keys_keep_their_places():
    t = Transcript([], None, None, ["no speech"], "srt", output="", speaker_embeddings={"SPEAKER_00": [0.5]},
                   debug_info={"timings": {}})
    assert list(response_dict(t)) == ["segments", "detected_language", "language_probability", "warnings",
                                      "speaker_embeddings", "output_format", "output", "debug_info"]
    assert response_dict(t)["output"] == ""  # an empty rendering is still sent

"""Result delivery (``result_store.deliver``): inline within the limit, a link over it, and never
an oversized inline response: no bucket or a failed upload is a clear error instead."""

from __future__ import annotations

import json

import pytest
from runpod.serverless.utils import rp_upload

import result_store
from result_store import ResultDelivery, ResultError, ResultTooLarge, ResultUploadFailed, deliver

NO_BUCKET = ResultDelivery(inline_limit_bytes=1_000)
BUCKET = ResultDelivery(inline_limit_bytes=1_000, bucket_configured=True, bucket_name="results")


def response(text_chars: int) -> dict:
    return {"detected_language": "ru", "language_probability": 0.99, "warnings": [],
            "segments": [{"start": 0.0, "end": 1.0, "text": "x" * text_chars}]}


def size_of(value: dict) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def test_small_result_stays_inline_unchanged():
    small = response(10)
    assert deliver(small, "job", NO_BUCKET) is small and small["warnings"] == []


def test_result_close_to_the_limit_warns():
    near = response(850)
    assert 800 < size_of(near) <= 1_000
    result = deliver(near, "job", NO_BUCKET)
    assert result["segments"] and "close to the inline limit" in result["warnings"][0]


def test_result_over_the_limit_without_bucket_is_an_error_not_an_inline_response():
    big = response(5_000)
    with pytest.raises(ResultTooLarge) as caught:
        deliver(big, "job", NO_BUCKET)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ResultError)
    assert message.startswith(f"the result is {size_of(big) / 1e3:.1f} kB, over the inline limit of 1.0 kB (RESULT_INLINE_LIMIT_BYTES)")
    assert "no bucket is configured (BUCKET_ENDPOINT_URL, " in message and "align_output=false" in message


def test_result_over_the_limit_is_uploaded_and_linked(monkeypatch):
    uploads = []

    def upload(file_name, data, bucket_name=None, prefix=None):
        uploads.append((file_name, data, bucket_name, prefix))
        return "https://s3.example.com/results/whisperx-results/job-1.json?X-Amz-Signature=abc"

    monkeypatch.setattr(rp_upload, "upload_in_memory_object", upload)
    big = response(5_000)
    big["warnings"].append("earlier warning")
    linked = deliver(big, "job-1", BUCKET)
    assert linked["result_url"].startswith("https://") and linked["segments"] == []
    assert linked["result_bytes"] == size_of(big) and linked["detected_language"] == "ru"
    assert linked["warnings"][0] == "earlier warning" and "uploaded" in linked["warnings"][1]
    (file_name, data, bucket_name, prefix), = uploads
    assert (file_name, bucket_name, prefix) == ("job-1.json", "results", "whisperx-results")
    assert json.loads(data) == big


def test_failed_upload_is_an_error_with_a_redacted_reason(monkeypatch):
    def upload(*args, **kwargs):
        raise ConnectionError("could not reach https://user:pw@s3.example.com/results?X-Amz-Signature=abc")

    monkeypatch.setattr(rp_upload, "upload_in_memory_object", upload)
    with pytest.raises(ResultUploadFailed) as caught:
        deliver(response(5_000), "job", BUCKET)
    message = str(caught.value)
    assert "over the inline limit" in message and "uploading it to the bucket failed (ConnectionError: " in message
    assert "pw@" not in message and "abc" not in message


def test_upload_that_gives_no_link_is_an_error(monkeypatch):
    # Without an S3 client the SDK writes the file to a local folder and returns its path.
    monkeypatch.setattr(rp_upload, "upload_in_memory_object", lambda *args, **kwargs: "local_upload/job.json")
    with pytest.raises(ResultUploadFailed, match="gave no link"):
        deliver(response(5_000), "job", BUCKET)


def test_a_lone_surrogate_does_not_break_the_size_check():
    odd = response(10)
    odd["segments"][0]["text"] = "bad \ud800 text"
    assert deliver(odd, "job", NO_BUCKET) is odd


def test_size_text():
    assert [result_store.size_text(n) for n in (500, 1_500, 12_345_678)] == ["500 bytes", "1.5 kB", "12.3 MB"]

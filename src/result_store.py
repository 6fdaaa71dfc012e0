"""Large results: keep them inline when they fit, upload them to a bucket when they do not.

RunPod rejects job outputs beyond its payload limits, and a transcript of hours of speech
with word timestamps can pass them. When the serialised response is larger than
``RESULT_INLINE_LIMIT_BYTES`` (default 8 MB) and a bucket is configured with RunPod's own
ENV (``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY``,
``BUCKET_NAME``), the full response is uploaded through the SDK's upload helper and a
presigned link is returned instead. A response over the limit is never returned inline:
without a bucket, or when the upload fails, :func:`deliver` raises a :class:`ResultError`
whose message says why and what to ask for instead. A response above 80 % of the limit
carries a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from logs import redact

logger = logging.getLogger(__name__)

DEFAULT_INLINE_LIMIT_BYTES = 8_000_000
WARN_FRACTION = 0.8
# Kept inline next to the link: small and what a client checks first.
INLINE_KEYS = ("detected_language", "language_probability", "output_format", "warnings")
BUCKET_ENV_TEXT = "BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, BUCKET_NAME"
# What makes a response smaller, for the error that refuses an oversized one.
SMALLER_RESULT_HINT = (
    "ask for fewer details (align_output=false drops the word timings; debug=false, "
    "return_speaker_embeddings=false) or send shorter audio"
)


class ResultError(ValueError):
    """A finished job's response cannot be delivered; the message is user-facing."""


class ResultTooLarge(ResultError):
    """The response is over the inline limit and no bucket is configured."""


class ResultUploadFailed(ResultError):
    """The response is over the inline limit and uploading it to the bucket failed."""


@dataclass(frozen=True)
class ResultDelivery:
    """Where a response goes (read from ENV once: ``settings.result_delivery_from_env``).

    inline_limit_bytes: largest serialised response returned inline, in bytes.
    bucket_configured: RunPod's bucket ENV is complete, so a larger one can be uploaded.
    bucket_name: the bucket (``BUCKET_NAME``; the settings refuse an endpoint without it).
    """

    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES
    bucket_configured: bool = False
    bucket_name: str | None = None


def size_text(size: int) -> str:
    """A byte count as people read it: "12.3 MB", "4.5 kB", "500 bytes"."""
    if size >= 1_000_000:
        return f"{size / 1e6:.1f} MB"
    if size >= 1_000:
        return f"{size / 1e3:.1f} kB"
    return f"{size} bytes"


def _serialise(response: dict | str) -> bytes:
    # "replace": a lone surrogate left in a response costs one "?" here instead of the job.
    return json.dumps(response, ensure_ascii=False).encode("utf-8", "replace")


def deliver(response: dict | str, job_id: str, delivery: ResultDelivery) -> dict | str:
    """The response to return for job ``job_id``: itself when it fits the inline limit, else a
    link to its uploaded copy. Raises :class:`ResultTooLarge` (no bucket) or
    :class:`ResultUploadFailed` rather than return an oversized response inline. A text body
    (OpenAI's ``text``, ``srt``, ``vtt``) is uploaded as the JSON string it would have been."""
    data = _serialise(response)
    limit = delivery.inline_limit_bytes
    size = size_text(len(data))
    if len(data) <= limit:
        if len(data) > WARN_FRACTION * limit and isinstance(response, dict):
            response.setdefault("warnings", []).append(
                f"the result is {size}, close to the inline limit of {size_text(limit)}; "
                f"configure a bucket ({BUCKET_ENV_TEXT}) to receive large results as a link"
            )
        return response
    over = f"the result is {size}, over the inline limit of {size_text(limit)} (RESULT_INLINE_LIMIT_BYTES)"
    if not delivery.bucket_configured:
        logger.warning("result of %s refused: over the inline limit and no bucket is configured", size)
        raise ResultTooLarge(f"{over} and no bucket is configured ({BUCKET_ENV_TEXT}): {SMALLER_RESULT_HINT}")
    from runpod.serverless.utils.rp_upload import upload_in_memory_object

    try:
        url = upload_in_memory_object(f"{job_id}.json", data, bucket_name=delivery.bucket_name, prefix="whisperx-results")
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {str(exc)[:200]}")
        logger.warning("result upload failed: %s", reason)
        raise ResultUploadFailed(f"{over} and uploading it to the bucket failed ({reason}); try again or {SMALLER_RESULT_HINT}") from None
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        # The SDK saves to a local folder instead when it has no S3 client (boto3 missing):
        # a path inside this container is no link for the client.
        logger.warning("result upload gave no link (%s)", type(url).__name__)
        raise ResultUploadFailed(f"{over} and the bucket upload gave no link (is boto3 installed?); {SMALLER_RESULT_HINT}")
    logger.info("result of %s uploaded to the bucket", size)
    kept = response if isinstance(response, dict) else {}
    linked = {key: kept[key] for key in INLINE_KEYS if key in kept}
    linked["warnings"] = [*kept.get("warnings", []), f"the result ({size}) was uploaded; fetch it from result_url"]
    linked.update(result_url=url, result_bytes=len(data), segments=[])
    return linked

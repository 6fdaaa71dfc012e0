"""Large results: keep them inline when they fit, upload them to a bucket when they do not.

RunPod rejects job outputs beyond its payload limits, and a transcript of hours of speech
with word timestamps can pass them. When the serialised response is larger than
``RESULT_INLINE_LIMIT_BYTES`` (default 8 MB) and a bucket is configured with RunPod's own
ENV (``BUCKET_ENDPOINT_URL``, ``BUCKET_ACCESS_KEY_ID``, ``BUCKET_SECRET_ACCESS_KEY``, optional
``BUCKET_NAME``), the full response is uploaded through the SDK's upload helper and a
presigned link is returned instead; without a bucket it stays inline with a warning. A
response above 80 % of the limit carries a warning either way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_INLINE_LIMIT_BYTES = 8_000_000
WARN_FRACTION = 0.8
# Kept inline next to the link: small and what a client checks first.
INLINE_KEYS = ("detected_language", "language_probability", "output_format", "warnings")


@dataclass(frozen=True)
class ResultDelivery:
    """Where a response goes (read from ENV once: ``settings.result_delivery_from_env``).

    inline_limit_bytes: largest serialised response returned inline, in bytes.
    bucket_configured: RunPod's bucket ENV is complete, so a larger one can be uploaded.
    bucket_name: the bucket (None: the SDK's default from the endpoint URL).
    limit_warning: why the configured limit was not used, logged with each result.
    """

    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES
    bucket_configured: bool = False
    bucket_name: str | None = None
    # A bad RESULT_INLINE_LIMIT_BYTES, said in every job's log (the default limit is used).
    limit_warning: str | None = None


def deliver(response: dict, job_id: str, delivery: ResultDelivery) -> dict:
    """The response to return for job ``job_id``: itself, or a link to its uploaded copy."""
    data = json.dumps(response, ensure_ascii=False).encode("utf-8")
    if delivery.limit_warning:
        logger.warning("%s", delivery.limit_warning)
    limit = delivery.inline_limit_bytes
    size_mb = len(data) / 1e6
    if len(data) <= limit:
        if len(data) > WARN_FRACTION * limit:
            response["warnings"].append(
                f"the result is {size_mb:.1f} MB, close to the inline limit of {limit / 1e6:.1f} MB; "
                "configure BUCKET_ENDPOINT_URL to receive large results as a link"
            )
        return response
    if not delivery.bucket_configured:
        response["warnings"].append(
            f"the result is {size_mb:.1f} MB, over the inline limit of {limit / 1e6:.1f} MB, and no bucket is "
            "configured (BUCKET_ENDPOINT_URL): RunPod may refuse it; use output_format or fewer details"
        )
        return response
    from runpod.serverless.utils.rp_upload import upload_in_memory_object

    try:
        url = upload_in_memory_object(
            f"{job_id}.json", data, bucket_name=delivery.bucket_name, prefix="whisperx-results"
        )
    except Exception as exc:  # a bucket outage must not lose the transcript: return it inline
        logger.warning("result upload failed: %s", type(exc).__name__)
        response["warnings"].append(f"uploading the {size_mb:.1f} MB result failed ({type(exc).__name__}); returned inline")
        return response
    logger.info("result of %.1f MB uploaded to the bucket", size_mb)
    linked = {key: response[key] for key in INLINE_KEYS if key in response}
    linked["warnings"] = [*response.get("warnings", []), f"the result ({size_mb:.1f} MB) was uploaded; fetch it from result_url"]
    linked.update(result_url=url, result_bytes=len(data), segments=[])
    return linked

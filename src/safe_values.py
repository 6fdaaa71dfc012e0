"""Values made safe to show and to send: a request's secrets and long strings shortened for
log lines (``REDACTED``, ``short``, ``redact_url``), and any answer made encodable by every
JSON encoder (``json_safe``). Standard library only.
"""

from __future__ import annotations

import math
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

#: Placeholder written instead of secrets in :meth:`rp_schema.RequestOptions.to_dict`.
REDACTED: Final = "***"


def short(value: Any, limit: int = 200) -> Any:
    """``value``, or its first ``limit`` characters and its length when it is a long string."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} chars)"
    return value


def redact_url(location: str) -> str:
    """Mask user info and query string of a URL; leave plain paths alone."""
    try:
        parts = urlsplit(location)
    except ValueError:  # malformed (e.g. "http://[::1"): show nothing of it
        return f"<malformed URL, {len(location)} chars>"
    if not parts.scheme or not parts.netloc:
        return location
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _safe_text(text: str) -> str:
    """``text`` with every code point UTF-8 cannot encode (a surrogate that is not half of a
    pair) replaced by U+FFFD; a surrogate pair becomes the character it stands for."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def json_safe(value: Any) -> Any:
    """``value`` made safe for any JSON encoder (``ensure_ascii`` or not, ``allow_nan`` or not).

    Recursively, in dict keys and string values (in dicts, lists and tuples), lone surrogates
    become U+FFFD (they cannot be encoded as UTF-8: the SDK's ``send_result`` and the local API
    fail on them), and non-finite floats (NaN, infinities: not JSON) become None. Other values
    are returned as they are; containers are copied only where something changed.
    """
    if isinstance(value, str):
        return _safe_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        items = [(_safe_text(key) if isinstance(key, str) else key, json_safe(item)) for key, item in value.items()]
        if all(new_key is key and new_item is item for (new_key, new_item), (key, item) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        converted = [json_safe(item) for item in value]
        if all(new is old for new, old in zip(converted, value)):
            return value
        return converted if isinstance(value, list) else tuple(converted)
    return value

"""Text from the environment or a form field read as a boolean, integer or number: the one
reading shared by request fields (``rp_schema``), worker settings (``settings``) and the
load-balancing door's form. Only the standard library, so it loads in microseconds."""

from __future__ import annotations

import math
from typing import Final

TRUE_WORDS: Final = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "off"})
NULL_WORDS: Final = frozenset({"none", "null"})


def parse_scalar(kind: type, text: str) -> bool | int | float | None:
    """Parse a bool/int/float string; None when it does not parse (or is not finite)."""
    if kind is bool:
        word = text.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if kind is int:
        # int() keeps precision for long digit strings; "4.0" is still an int.
        try:
            return int(text)
        except ValueError:
            return int(number) if number.is_integer() else None
    return number

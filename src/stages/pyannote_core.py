"""pyannote.core's time structures (``Annotation``, ``Segment``, ``SlidingWindow``,
``SlidingWindowFeature``), imported without its notebook module.

Why: ``pyannote.core``'s ``__init__`` imports ``pyannote.core.notebook``, which builds a
plotting helper at import time and so imports ``matplotlib.pyplot`` whenever matplotlib is
installed (it is, for pyannote.audio): ~0.45 s of the diarization lane's ~0.6 s of imports on
the 2-core test machine (``python -X importtime``), for plots the worker never draws. pyannote.core
treats a failing notebook import as "no notebook" (``try: from .notebook import notebook
except ImportError``), so this module makes that import fail for the duration of the first
import of pyannote.core only, then lets later imports of ``pyannote.core.notebook`` (an
``Annotation``'s notebook rendering, pyannote.audio) load it as usual.

Every module of src/ takes pyannote.core's names from here, so whichever imports first sets
pyannote.core up this way; when something outside src/ imported pyannote.core first, this
changes nothing.
"""

from __future__ import annotations

import sys

_NOTEBOOK = "pyannote.core.notebook"

if "pyannote.core" not in sys.modules and _NOTEBOOK not in sys.modules:
    # None in sys.modules makes ``import pyannote.core.notebook`` raise ImportError.
    sys.modules[_NOTEBOOK] = None  # type: ignore[assignment]
    try:
        import pyannote.core  # noqa: F401 - imported here, without its notebook
    finally:
        if sys.modules.get(_NOTEBOOK, False) is None:
            del sys.modules[_NOTEBOOK]

from pyannote.core import Annotation, Segment, SlidingWindow, SlidingWindowFeature  # noqa: E402
from pyannote.core.utils.generators import string_generator  # noqa: E402

__all__ = ["Annotation", "Segment", "SlidingWindow", "SlidingWindowFeature", "string_generator"]

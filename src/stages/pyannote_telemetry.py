"""pyannote's usage telemetry, turned off for the whole process."""

from __future__ import annotations

import os


def disable_pyannote_telemetry() -> None:
    """Set ``PYANNOTE_METRICS_ENABLED=false``.

    pyannote 4 sends usage metrics to its servers by default (it reads this variable on every
    model load and pipeline run, and sets it to true when it is imported). A worker handling
    users' audio has no reason to, and offline the exporter would only time out.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

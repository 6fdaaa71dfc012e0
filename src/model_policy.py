"""Which models a request may name, refused before anything is loaded.

A ``model`` or ``diarization_model`` on the worker's disk (folder or YAML) is a local path
like ``audio_file`` and needs ``ALLOW_LOCAL_FILES``. Other names must be allowed
(``ALLOWED_MODELS``; always: the defaults and, for ``model``, the folders of ``MODELS_DIR``),
since each one loaded takes memory. Values set by the operator (ENV or default) are trusted.
"""

from __future__ import annotations

import rp_schema
from job_state import UserError
from resident.models import in_models_dir, is_allowed, looks_like_local_path
from settings import WorkerSettings


def _refuse_local_path(field_name: str, name: str, allow_local: bool, instead: str, what: str) -> None:
    """Raise ``UserError`` naming ``field_name`` when ``name`` is on the worker's disk and
    ``ALLOW_LOCAL_FILES`` is off (a local model is a local path like ``audio_file``)."""
    if looks_like_local_path(name) and not allow_local:
        raise UserError(f"{field_name}: local paths are disabled; {instead} "
                        f"(set ALLOW_LOCAL_FILES=true to allow {what} on the worker's disk)")


def _from_request(opts: rp_schema.RequestOptions, name: str) -> bool:
    """Whether field ``name`` came from the request (not ENV or default; options built
    directly, without sources, count as the request's)."""
    source = opts.sources.get(name, "request")
    return source == "request"


def check_model_fields(opts: rp_schema.RequestOptions, compute_type: str, settings: WorkerSettings,
                       default_asr_models: set[str], default_diarization_models: set[str]) -> None:
    """Raise ``UserError`` for a ``model`` / ``diarization_model`` this request may not name
    (see the module docstring). default_*: the names a request gets without naming one."""
    allow_local = settings.fetch.allow_local_files
    allowed = settings.allowed_models
    if _from_request(opts, "model"):
        name = opts.model
        _refuse_local_path("model", name, allow_local, "give a model name", "models")
        if not looks_like_local_path(name) and not (
                in_models_dir(name, settings.models_dir)
                or is_allowed(name, compute_type, allowed, default_asr_models)):
            raise UserError(f"model {name!r} with compute_type {compute_type} is not allowed on this worker "
                            f"(ALLOWED_MODELS; allowed: the preloaded model, the models in MODELS_DIR"
                            f"{', ' + ', '.join(allowed) if allowed else ''})")
    if _from_request(opts, "diarization_model"):
        name = opts.diarization_model
        _refuse_local_path("diarization_model", name, allow_local, "give a Hub id", "pipelines")
        if not looks_like_local_path(name) and not is_allowed(name, None, allowed, default_diarization_models):
            raise UserError(f"diarization_model {name!r} is not allowed on this worker (ALLOWED_MODELS; "
                            f"allowed: {', '.join(sorted(default_diarization_models | set(allowed)))})")

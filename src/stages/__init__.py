"""The pipeline's stages, one job per module, in the order a request meets them: fetch (with
url_guard) → audio (with ffmpeg_tools) → vad → asr (with hallucinations) → alignment (with
aligners, ctc_alignment) → diarization (with offline_diarization, offline_assets,
plain_diarization and its steps speaker_segmentation, chunk_embeddings, diarization_clustering,
diarization_frames; pyannote_offline_diarization, campplus, pyannote_hub, pyannote_telemetry) →
speaker_assignment → formats.

Data and options in, data out. A stage never imports a door (``handler``, ``local_run``),
the job runner (``jobs``), ``predict`` or ``resident``; it may import its neighbours here and
the bottom layer (``job_control``, ``model_cache``, ``logs``, ``languages``).
"""

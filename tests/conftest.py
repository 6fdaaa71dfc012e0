"""Shared test set-up: put ``src/`` on the import path (the worker runs as ``python src/handler.py``),
and fail the run when a test was skipped.

No test may pass vacuously on a fresh machine: a missing asset or tool fails with the set-up
command in the message (``tests/references.py``'s ``require_assets``), never skips. The hooks
below enforce it: any skip, at collection or at run time, of a test not marked ``gpu`` (the one
kind a CPU-only machine cannot run; marker in pytest.ini) turns a passing run into exit code 1
and lists the skips. ``.ci/run`` relies on this check (it runs pytest through scripts/test.sh).
An xfail is not a skip and is left alone.
"""

import pathlib
import socket
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

GPU_MARK = "gpu"


class SkipGuard:
    """Plugin that collects forbidden skips and fails the session on them (one per run)."""

    def __init__(self) -> None:
        self.skips: list[str] = []  # "nodeid: reason"

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        """Remember a skip unless it is an xfail or the test carries the ``gpu`` mark."""
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if GPU_MARK in getattr(report, "keywords", {}):
            return
        self.skips.append(f"{report.nodeid or report.fspath}: {_reason(report)}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A module skipped at import (module-level ``pytest.skip``/``importorskip``) counts too."""
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A test skipped by a mark, or by ``pytest.skip`` in a fixture or in its body."""
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Turn an otherwise passing run into a failure (exit code 1)."""
        if self.skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """List the skips that failed the run, with their reasons."""
        if not self.skips:
            return
        terminalreporter.section("skipped tests that are not GPU-only (this fails the run)", red=True, bold=True)
        for line in self.skips:
            terminalreporter.line(f"SKIPPED {line}")
        terminalreporter.line("Only tests marked @pytest.mark.gpu may skip; a missing asset or tool must fail "
                              "with the set-up command (bash scripts/setup.sh) in its message.")


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The skip message (pytest keeps it as a (path, line, message) tuple)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    """Register the skip guard for this session."""
    config.pluginmanager.register(SkipGuard(), "whisperx-skip-guard")


@pytest.fixture
def connects(monkeypatch) -> list[tuple[str, int]]:
    """Every (address, port) a socket of this process tried to connect to during the test
    (SSRF and DNS-rebinding tests: a refused target is never connected to)."""
    seen: list[tuple[str, int]] = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append((str(address[0]), int(address[1])))
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen

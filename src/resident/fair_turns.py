"""Fair turns at a shared resource: at most N holders at once, served first come first
served, and a holder that reaches a natural break while others wait goes to the back.

Diarization runs long files in many batches (segmentation, then speaker embeddings); with
first-come-first-served threads a 30 s clip submitted behind a 10-minute file waited for
the whole file. With turns, the long run hands its turn over after a batch whenever a
newer run waits, so the short one finishes within a few of the long one's batches
(bench/fault_bench.py measures short-clip latency beside a long file).

A waiting caller polls ``check`` (its job's stop test) so a cancelled or expired job stops
waiting at once. Imports nothing of the worker's.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# How often a waiting caller runs its stop check (seconds).
WAIT_CHECK_S = 0.2


class FairTurns:
    """``slots`` turns handed out in ticket order (thread-safe)."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._lock = threading.Condition()
        self._tickets = itertools.count()
        self._queue: list[int] = []  # tickets waiting, oldest first
        self._holders = 0
        self.handovers = 0  # turns given up for a waiting run (how often fairness acted)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    def _acquire(self, check: Callable[[], None] | None) -> None:
        with self._lock:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while self._holders >= self.slots or self._queue[0] != ticket:
                    self._lock.wait(WAIT_CHECK_S if check else None)
                    if check is not None:
                        check()
            except BaseException:
                self._queue.remove(ticket)
                self._lock.notify_all()
                raise
            self._queue.pop(0)
            self._holders += 1
            self._lock.notify_all()

    def _release(self) -> None:
        with self._lock:
            self._holders -= 1
            self._lock.notify_all()

    @contextmanager
    def turn(self, check: Callable[[], None] | None = None) -> Iterator[Turn]:
        """Hold a turn for the block; waits (running ``check`` every ``WAIT_CHECK_S``) until one
        is free and every earlier caller has had theirs. The block may hand it over at a break
        with ``Turn.pass_turn``."""
        self._acquire(check)
        held = Turn(self, check)
        try:
            yield held
        finally:
            if held.held:
                self._release()


class Turn:
    """One holder's turn (``FairTurns.turn``)."""

    def __init__(self, turns: FairTurns, check: Callable[[], None] | None) -> None:
        self._turns, self._check = turns, check
        self.held = True

    def pass_turn(self) -> None:
        """At a break: if anyone waits, let them go first and queue again at the back (the
        holder's ``check`` runs while it waits); otherwise return at once."""
        turns = self._turns
        with turns._lock:
            if not turns._queue:
                return
            turns.handovers += 1
        self.held = False
        turns._release()
        turns._acquire(self._check)
        self.held = True

"""FairTurns: first come first served, a holder hands its turn over at a break, a stopped
waiter leaves the queue (src/resident/fair_turns.py)."""

from __future__ import annotations

import threading
import time

import pytest

from resident.fair_turns import FairTurns


def test_one_slot_serves_in_order_and_hands_over_at_breaks():
    turns = FairTurns(1)
    order: list[str] = []
    long_started = threading.Event()

    def long_run() -> None:
        with turns.turn() as held:
            long_started.set()
            for step in range(20):
                order.append(f"long{step}")
                time.sleep(0.02)
                held.pass_turn()

    def short_run() -> None:
        with turns.turn():
            order.append("short")

    first = threading.Thread(target=long_run)
    first.start()
    long_started.wait()
    time.sleep(0.05)
    second = threading.Thread(target=short_run)
    second.start()
    second.join(timeout=5)
    first.join(timeout=5)
    assert "short" in order and order.index("short") < 10  # served within a few of the long run's steps
    assert order[-1] == "long19" and turns.handovers >= 1


def test_no_waiter_means_no_handover():
    turns = FairTurns(1)
    with turns.turn() as held:
        held.pass_turn()
    assert turns.handovers == 0


def test_stopped_waiter_leaves_the_queue_and_slots_stay_consistent():
    turns = FairTurns(1)
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise TimeoutError("job stopped")

    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with turns.turn(check):
                pass
        except TimeoutError as exc:
            errors.append(exc)

    with turns.turn():
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        assert turns.waiting == 1
        stop.set()
        thread.join(timeout=2)
    assert errors and turns.waiting == 0
    with turns.turn():  # the slot is free again
        pass


def test_a_holder_stopped_while_requeued_releases_nothing_twice():
    turns = FairTurns(1)
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise TimeoutError("stopped")

    got_turn = threading.Event()

    def other() -> None:
        with turns.turn():
            got_turn.set()
            time.sleep(0.3)

    with pytest.raises(TimeoutError):
        with turns.turn(check) as held:
            thread = threading.Thread(target=other)
            thread.start()
            while turns.waiting == 0:
                time.sleep(0.01)
            stop.set()
            held.pass_turn()  # hands over, then its check raises while waiting again
    thread.join(timeout=2)
    assert got_turn.is_set()
    assert turns._holders == 0

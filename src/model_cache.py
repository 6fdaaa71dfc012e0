"""A thread-safe LRU cache of loaded models whose loads run outside its lock, one per key.

Contract
--------
``SingleFlightCache.get(key, load)`` returns ``(value, seconds)``: the resident value of
``key`` with 0.0, or the value of a load and the seconds this call spent loading it or
waiting for another caller's load of it.

* Single flight: the first caller of a missing key runs ``load()``; callers of the same key
  meanwhile wait for that load and get its value or its exception; callers of other keys
  are never held up by it (the cache lock is held only for bookkeeping, never during a load,
  so a load hanging on a network call delays nobody but those who need that very model).
* A waiter may stop waiting: ``wait_check`` is called every ``WAIT_CHECK_INTERVAL_S`` while
  it waits and may raise (a cancelled or timed-out job); the load goes on for the others.
* A failed load is not cached: its exception reaches the caller that ran it and those who
  waited for it, and the next caller loads again (registries keep their own failure memos).
  With ``retry_failed`` a waiter runs a load of its own instead (when the outcome depends on
  the caller, e.g. on its access token, and one caller's error must not reach another).
* Bounded: at most ``max_cached`` values stay resident besides the kept ones (``kept`` and
  ``keep``), the least recently used non-kept one dropped first: before a load, so its
  memory can serve the new model, and again after it, in case other loads ran meanwhile.
  A dropped value lives on while a caller still holds it (a job in progress).

Re-entrancy: a ``load`` must not ``get`` its own key (it would wait for itself).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# How often (seconds) a caller waiting for another caller's load runs its ``wait_check``:
# short enough that a cancelled job stops waiting promptly, long enough to cost nothing.
WAIT_CHECK_INTERVAL_S = 0.2


class _Flight(Generic[V]):
    """One load in progress: its outcome, published once to the callers waiting for it."""

    value: V

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None

    def succeed(self, value: V) -> None:
        self.value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def wait(self, wait_check: Callable[[], None] | None) -> None:
        """Until the load ends; ``wait_check`` is run every ``WAIT_CHECK_INTERVAL_S`` seconds
        meanwhile (what it raises ends the wait)."""
        if wait_check is None:
            self.done.wait()
            return
        while not self.done.wait(WAIT_CHECK_INTERVAL_S):
            wait_check()


class SingleFlightCache(Generic[K, V]):
    """LRU cache of loaded models, loading each key once at a time outside its lock.

    max_cached: values kept resident besides the kept ones (>= 0); the least recently used
        non-kept one is dropped first.
    kept: keys never dropped (preloaded models), besides those given to ``keep``.
    on_evict: called with the keys just dropped (the cache holds no reference to their values
        any more), outside the lock: the place to log and to return freed device memory.
        It should not raise (what it raises reaches the caller whose load dropped them).
    """

    def __init__(
        self,
        max_cached: int,
        kept: Callable[[K], bool] = lambda _key: False,
        on_evict: Callable[[list[K]], None] | None = None,
    ) -> None:
        self.max_cached = max_cached
        self._kept_by_rule = kept
        self._kept_keys: set[K] = set()
        self._on_evict = on_evict
        self._values: OrderedDict[K, V] = OrderedDict()  # least recently used first
        self._flights: dict[K, _Flight[V]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        key: K,
        load: Callable[[], V],
        *,
        wait_check: Callable[[], None] | None = None,
        retry_failed: bool = False,
    ) -> tuple[V, float]:
        """The value of ``key`` and the seconds this call spent loading it or waiting for its
        load (0.0 when resident). Runs ``load()`` when no one else is loading ``key``.

        Raises what ``load`` raised, in this call or (unless ``retry_failed``) in the load this
        call waited for, or what ``wait_check`` raised.
        retry_failed: after waiting for a load that failed, load again (or wait for the load
            another caller started meanwhile) instead of raising that load's exception.
        """
        started = time.perf_counter()
        waited = False  # for another caller's load that failed (retry_failed)
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key], time.perf_counter() - started if waited else 0.0
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    dropped = self._evict(key)
                    break
            flight.wait(wait_check)
            waited = True
            if flight.error is None:
                return flight.value, time.perf_counter() - started
            if not retry_failed:
                # The one exception object, as concurrent.futures does: the load ran once.
                raise flight.error
        try:
            self._dropped(dropped)
            value = load()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.fail(exc)
            raise
        with self._lock:
            del self._flights[key]
            self._values[key] = value
            dropped = self._evict(key)
        flight.succeed(value)
        self._dropped(dropped)
        return value, time.perf_counter() - started

    def keep(self, key: K) -> None:
        """Never drop ``key`` from now on (a model preloaded at start-up)."""
        with self._lock:
            self._kept_keys.add(key)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is resident (not counted as a use)."""
        with self._lock:
            return key in self._values

    def resident(self) -> list[K]:
        """The resident keys, least recently used first."""
        with self._lock:
            return list(self._values)

    def _is_kept(self, key: K) -> bool:
        return key in self._kept_keys or self._kept_by_rule(key)

    def _evict(self, newest: K) -> list[K]:
        """Under the lock: drop least recently used non-kept values so that, with ``newest``
        (resident or about to be), at most ``max_cached`` non-kept ones stay; the keys dropped."""
        evictable = [key for key in self._values if key != newest and not self._is_kept(key)]
        excess = len(evictable) + (not self._is_kept(newest)) - self.max_cached
        dropped = evictable[: max(0, excess)]
        for key in dropped:
            del self._values[key]
        return dropped

    def _dropped(self, keys: list[K]) -> None:
        if keys and self._on_evict is not None:
            self._on_evict(keys)


def release_cuda_cache() -> None:
    """Return torch's cached CUDA blocks to the device, when torch is already imported and
    CUDA initialised (never imports torch nor initialises CUDA itself); best effort."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing a cache must never fail a job
        pass

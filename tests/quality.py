"""Quality claims that survive another CPU: paired tests over clips, and recorded bounds.

Floating-point kernels differ by instruction set and library (CTranslate2's
``CT2_FORCE_CPU_ISA`` / ``CT2_USE_MKL``, oneDNN's ``ONEDNN_MAX_CPU_ISA``, torch's
``ATEN_CPU_CAPABILITY``), so a transcript may move by a word or two from one machine to the
next. Two kinds of assertion follow from that:

1. **"A is not worse than B"** (the worker against plain faster-whisper, a setting against
   another) is a one-sided paired test over clips, failing only when A is worse than B at
   ``ALPHA`` = 0.01. If A and B are equally good the test fails at most 1 run in 100, on any
   CPU: the false-failure rate does not depend on how much the kernels move each clip.

   - Word errors: the exact sign-flip (permutation) test on the per-clip differences of error
     counts (:func:`sign_flip_p_value`). Under "equally good" each clip's difference is as
     likely to be +d as -d; the p-value is the share of the 2^n sign patterns whose sum
     reaches the observed one, computed exactly by dynamic programming over the sums.
   - Right/wrong per clip (language detection): the exact McNemar test, a binomial test on
     the clips where exactly one of the two is right (:func:`mcnemar_p_value`).

   Power, for scale: 8 clips all one word worse and none better give p = 2^-8 = 0.004 (fail);
   the telephone-band run that failed its old fixed margin on an AMD EPYC (worker 0.2024 vs
   faster-whisper 0.1873, 5 words in 330) is within noise (p > 0.1; tests/unit/test_quality.py).

2. **Absolute bounds** (a WER floor, a DER bound, a median timing error) are set from the
   spread measured across every kernel path this machine can force, plus a written margin;
   :func:`record` writes each measured value to the JSON-lines file named by
   ``QUALITY_RECORD`` (set by ``scripts/kernel_paths.py``, which tabulates them per path into
   docs/BENCHMARKS.md). Without the variable nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
from references import normalise

ALPHA = 0.01  # false-failure rate of every paired "not worse" assertion


# ------------------------------------------------------------------ the statistics
def sign_flip_p_value(diffs: Sequence[int]) -> float:
    """One-sided p-value that the integer differences ``diffs`` sum this high by chance.

    Null hypothesis: each difference is symmetric about 0 (A and B equally good, clip by
    clip). Returns P(sum of ±|d_i| with fair random signs >= sum(d_i)), exact.
    """
    magnitudes = [abs(int(d)) for d in diffs if d]
    observed = sum(int(d) for d in diffs)
    total = sum(magnitudes)
    if total == 0:
        return 1.0
    # dist[s] = P(the "+" signs' magnitudes sum to s); the signed sum is 2s - total.
    dist = [1.0] + [0.0] * total
    for m in magnitudes:
        shifted = [0.0] * m + dist[:-m]
        dist = [(a + b) / 2 for a, b in zip(dist, shifted, strict=True)]
    need = math.ceil((observed + total) / 2)  # 2s - total >= observed
    return float(min(1.0, sum(dist[max(need, 0):])))


def mcnemar_p_value(only_a_wrong: int, only_b_wrong: int) -> float:
    """One-sided exact McNemar p-value that A is wrong more often than B by chance.

    ``only_a_wrong``: clips A gets wrong and B right; ``only_b_wrong``: the reverse. Null: a
    discordant clip is equally likely either way (binomial, p = 1/2).
    """
    n = only_a_wrong + only_b_wrong
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(only_a_wrong, n + 1)) / 2**n)


def bootstrap_wer_difference(errors_a: Sequence[int], errors_b: Sequence[int], words: Sequence[int],
                             level: float = 0.95, rounds: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of corpus WER(A) - WER(B), resampling clips (paired).

    ``errors_a[i]``, ``errors_b[i]``, ``words[i]``: clip i's word errors of A and B and its
    reference words. Deterministic for a given ``seed``.
    """
    import numpy as np

    ea, eb, n = (np.asarray(x, dtype=np.float64) for x in (errors_a, errors_b, words))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(n), size=(rounds, len(n)))
    diffs = (ea[picks].sum(axis=1) - eb[picks].sum(axis=1)) / np.maximum(n[picks].sum(axis=1), 1)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(low), float(high)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) after ``references.normalise``: WER's numerator and
    denominator for one clip."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref.split():
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


@dataclass(frozen=True)
class PairedWer:
    """The paired comparison of two systems' transcripts of the same clips."""

    clips: int
    words: int  # reference words in all clips
    errors_a: int
    errors_b: int
    a_worse_clips: int  # clips where A made more errors than B
    b_worse_clips: int
    p_value: float  # one-sided: A worse than B by chance (sign-flip test)

    @property
    def wer_a(self) -> float:
        return self.errors_a / max(self.words, 1)

    @property
    def wer_b(self) -> float:
        return self.errors_b / max(self.words, 1)

    def describe(self, a: str = "A", b: str = "B") -> str:
        return (f"{a} WER {self.wer_a:.4f} vs {b} {self.wer_b:.4f} over {self.clips} clips ({self.words} words): "
                f"{self.errors_a - self.errors_b:+d} errors, {a} worse on {self.a_worse_clips} clips, "
                f"better on {self.b_worse_clips}; one-sided sign-flip p = {self.p_value:.4g} (fails below {ALPHA})")


# Fewer clips than this and the sign-flip test cannot reach ALPHA (its smallest p is 2^-n):
# such a comparison could never fail, so it is refused.
MIN_CLIPS = math.ceil(math.log2(1 / ALPHA))


def paired_wer(references: Sequence[str], a: Sequence[str], b: Sequence[str]) -> PairedWer:
    """Per-clip word errors of ``a`` and ``b`` against ``references``, and the sign-flip test."""
    if len(references) < MIN_CLIPS:
        raise ValueError(f"{len(references)} clips: a paired test needs at least {MIN_CLIPS} to be able to fail at {ALPHA}")
    counts = [(word_errors(r, x), word_errors(r, y)) for r, x, y in zip(references, a, b, strict=True)]
    diffs = [ea - eb for (ea, _), (eb, _) in counts]
    return PairedWer(
        clips=len(counts), words=sum(n for (_, n), _ in counts),
        errors_a=sum(e for (e, _), _ in counts), errors_b=sum(e for _, (e, _) in counts),
        a_worse_clips=sum(d > 0 for d in diffs), b_worse_clips=sum(d < 0 for d in diffs),
        p_value=sign_flip_p_value(diffs),
    )


def assert_not_worse(name: str, references: Sequence[str], a: Sequence[str], b: Sequence[str],
                     a_label: str = "worker", b_label: str = "faster-whisper") -> PairedWer:
    """Fail only if ``a``'s transcripts are worse than ``b``'s at ``ALPHA`` (sign-flip test);
    record and print the comparison either way."""
    result = paired_wer(references, a, b)
    text = result.describe(a_label, b_label)
    print(f"{name}: {text}")
    record(name, "wer_a", round(result.wer_a, 4), note=a_label)
    record(name, "wer_b", round(result.wer_b, 4), note=b_label)
    record(name, "p_value", round(result.p_value, 4), bound=ALPHA, op=">=")
    assert result.p_value >= ALPHA, f"{name}: {text}"
    return result


def assert_detection_not_worse(name: str, only_a_wrong: Sequence[str], only_b_wrong: Sequence[str]) -> float:
    """Fail only if A is wrong on significantly more clips than B (exact McNemar, ``ALPHA``)."""
    p = mcnemar_p_value(len(only_a_wrong), len(only_b_wrong))
    text = (f"only the worker wrong on {len(only_a_wrong)} {list(only_a_wrong)}, only faster-whisper wrong on "
            f"{len(only_b_wrong)} {list(only_b_wrong)}; one-sided McNemar p = {p:.4g} (fails below {ALPHA})")
    print(f"{name}: {text}")
    record(name, "only_worker_wrong", len(only_a_wrong))
    record(name, "p_value", round(p, 4), bound=ALPHA, op=">=")
    assert p >= ALPHA, f"{name}: {text}"
    return p


# ------------------------------------------------------------------ the record
@dataclass(frozen=True)
class Measurement:
    """One measured quality figure of one test run (one kernel path)."""

    test: str
    metric: str
    value: float
    bound: float | None
    op: str  # how value is held against bound: "<=", ">=", "<", ">"
    note: str


def record(test: str, metric: str, value: float, bound: float | None = None, op: str = "<=", note: str = "") -> None:
    """Append one measurement to ``$QUALITY_RECORD`` (JSON lines), if that variable is set.

    Call it before the assertion it backs, so a failing run still leaves its number.
    """
    path = os.environ.get("QUALITY_RECORD")
    if not path:
        return
    line = Measurement(test, metric, float(value), None if bound is None else float(bound), op, note)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(line), ensure_ascii=False) + "\n")


def check_bound(test: str, metric: str, value: float, bound: float, op: str = "<=") -> None:
    """Record ``value`` and assert it against ``bound`` (an absolute bound; see module docstring)."""
    record(test, metric, value, bound, op)
    ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
    assert ok, f"{test}: {metric} = {value:.4g}, bound {op} {bound}"

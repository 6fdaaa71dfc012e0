"""The paired tests behind every "not worse" quality assertion (tests/quality.py): exact
p-values against brute force, the stated false-failure rate, and power on real-sized cases."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import quality


def brute_force_sign_flip(diffs: list[int]) -> float:
    observed = sum(diffs)
    patterns = list(itertools.product((1, -1), repeat=len(diffs)))
    return sum(sum(s * abs(d) for s, d in zip(signs, diffs, strict=True)) >= observed for signs in patterns) / len(patterns)


@pytest.mark.parametrize("diffs", [[1], [-1], [2, -1], [3, 1, -2, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1], [5, -5, 2, 2, -1, 3, 0, 4]])
def test_sign_flip_is_exact(diffs):
    assert quality.sign_flip_p_value(diffs) == pytest.approx(brute_force_sign_flip(diffs), abs=1e-12)


def test_sign_flip_edges():
    assert quality.sign_flip_p_value([]) == 1.0
    assert quality.sign_flip_p_value([0, 0, 0]) == 1.0
    assert quality.sign_flip_p_value([1] * 8) == pytest.approx(2**-8)  # 8 clips one word worse: fails at 0.01
    assert quality.sign_flip_p_value([-1] * 8) == 1.0  # better everywhere: nothing to fail


def test_false_failure_rate_is_at_most_alpha():
    """Simulated equal systems (each clip's difference symmetric about 0, of kernel-like
    sizes): the test fails in at most ALPHA of the runs, up to binomial noise (4 sigma)."""
    rng = random.Random(7)
    runs, failures = 4000, 0
    for _ in range(runs):
        diffs = [rng.choice((-2, -1, -1, 0, 0, 0, 0, 1, 1, 2)) for _ in range(21)]
        failures += quality.sign_flip_p_value(diffs) < quality.ALPHA
    bound = quality.ALPHA + 4 * math.sqrt(quality.ALPHA * (1 - quality.ALPHA) / runs)
    assert failures / runs <= bound


def test_a_real_degradation_fails():
    """A worker that loses two words on most of 21 clips (about 10 % more WER on the
    telephone clips) is caught."""
    diffs = [2] * 14 + [0] * 5 + [-1] * 2
    assert quality.sign_flip_p_value(diffs) < quality.ALPHA


def test_mcnemar():
    assert quality.mcnemar_p_value(0, 0) == 1.0
    assert quality.mcnemar_p_value(1, 0) == 0.5
    assert quality.mcnemar_p_value(7, 0) == pytest.approx(2**-7)  # fails at 0.01
    assert quality.mcnemar_p_value(3, 2) == pytest.approx(sum(math.comb(5, k) for k in range(3, 6)) / 32)


def test_paired_wer_counts_words_and_errors():
    filler = ["семь"] * quality.MIN_CLIPS
    refs = ["один два три", "четыре пять", *filler]
    a = ["один два", "четыре пять", *filler]  # one deletion
    b = ["один два три", "четыре шесть", *filler]  # one substitution
    result = quality.paired_wer(refs, a, b)
    assert (result.words, result.errors_a, result.errors_b) == (5 + quality.MIN_CLIPS, 1, 1)
    assert (result.a_worse_clips, result.b_worse_clips) == (1, 1)
    assert result.wer_a == pytest.approx(1 / 12)


def test_too_few_clips_cannot_fail_so_are_refused():
    with pytest.raises(ValueError, match="at least"):
        quality.paired_wer(["a"] * 4, ["a"] * 4, ["b"] * 4)


def test_assert_not_worse_fails_on_a_clearly_worse_system(monkeypatch):
    monkeypatch.delenv("QUALITY_RECORD", raising=False)  # made-up figures stay out of kernel_paths' table
    refs = [f"слово {i} и ещё одно" for i in range(10)]
    with pytest.raises(AssertionError, match="sign-flip p"):
        quality.assert_not_worse("demo", refs, ["слово"] * 10, refs)
    quality.assert_not_worse("demo", refs, refs, ["слово"] * 10)  # better: passes


def test_record_writes_json_lines(tmp_path, monkeypatch):
    path = tmp_path / "q.jsonl"
    monkeypatch.setenv("QUALITY_RECORD", str(path))
    quality.check_bound("t", "wer", 0.1, 0.2)
    with pytest.raises(AssertionError):
        quality.check_bound("t", "der", 0.5, 0.3)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and '"metric": "der"' in lines[1]

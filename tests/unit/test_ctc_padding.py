"""Padded widths of the aligner's batched forwards: which shapes a job's rows can take (each is
warmed up once at start-up on a GPU, so fewer widths mean a shorter start-up)."""

from __future__ import annotations

from stages import ctc_batches
from stages.ctc_batches import CtcAlignOptions

RATE = ctc_batches.SAMPLE_RATE


def test_rows_pad_to_the_first_width_that_holds_them_then_to_whole_seconds():
    options = CtcAlignOptions()
    padded = [ctc_batches.padded_length(int(s * RATE), options) / RATE for s in (0.01, 1.0, 1.01, 7.9, 8.5, 10.2, 25.0, 31.0, 33.2)]
    assert padded == [1, 1, 2, 8, 9, 12, 30, 32, 34]


def test_default_widths_up_to_32_s_are_18_shapes_and_keep_the_rows_per_forward_of_whole_seconds():
    """A row gets as many companions in a forward as with whole-second widths, so a long file's
    forwards are as many as before; only the padding within them grows."""
    options = CtcAlignOptions()
    whole_seconds = CtcAlignOptions(pad_widths_s=())
    widths = ctc_batches.padded_widths(32 * RATE, options)
    assert [w / RATE for w in widths] == list(options.pad_widths_s) and len(widths) == 18
    for tenths in range(1, 321):
        samples = tenths * RATE // 10
        assert ctc_batches.rows_for_length(ctc_batches.padded_length(samples, options), options) == \
            ctc_batches.rows_for_length(ctc_batches.padded_length(samples, whole_seconds), whole_seconds), tenths


def test_without_listed_widths_rows_pad_to_whole_seconds_as_before():
    options = CtcAlignOptions(pad_widths_s=())
    assert len(ctc_batches.padded_widths(32 * RATE, options)) == 32
    assert ctc_batches.padded_length(int(8.5 * RATE), options) == 9 * RATE


def test_padded_batches_count_each_row_at_its_padded_width():
    """Twelve 9.5-s rows pad to 10 s: at most 12 fit in 120 s of padded audio, so one batch;
    rows of 11 s (padded to 12 s): only 10 fit."""
    options = CtcAlignOptions()
    assert [len(b) for b in ctc_batches.plan_batches([int(9.5 * RATE)] * 12, True, options)] == [12]
    assert [len(b) for b in ctc_batches.plan_batches([11 * RATE] * 12, True, options)] == [10, 2]

"""Length batching: every sequence once, batches capped, and padding bounded where lengths are uneven."""

from __future__ import annotations

import random

import pytest

from utils.model.batching import MAX_PADDING_FACTOR, length_batches


def padded_and_real(batch: list[int], lengths: list[int]) -> tuple[int, int]:
    return len(batch) * max(lengths[i] for i in batch), sum(lengths[i] for i in batch)


def test_one_long_prompt_gets_a_batch_of_its_own():
    # the smol KL prompts, as their token counts: fifteen short ones and one of 742 tokens
    lengths = [39, 42, 44, 44, 45, 46, 51, 54, 54, 55, 58, 58, 58, 64, 108, 742]
    batches = length_batches(lengths, 16)
    assert batches[-1] == [15] and sorted(i for b in batches for i in b) == list(range(16))
    padded = sum(padded_and_real(b, lengths)[0] for b in batches)
    assert padded < 2 * sum(lengths)  # one batch of 16 would have padded to 16 x 742 = 7.5x the real tokens


def test_even_lengths_fill_the_batches():
    assert length_batches([10, 12, 11, 9, 10], 2) == [[3, 0], [4, 2], [1]]
    assert length_batches([5] * 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("seed", range(20))
def test_every_index_once_batches_capped_padding_bounded(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 60), rng.randint(200, 2000)]) for _ in range(rng.randint(1, 80))]
    batch_size = rng.randint(1, 16)
    batches = length_batches(lengths, batch_size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    for b in batches:
        padded, real = padded_and_real(b, lengths)
        assert padded <= MAX_PADDING_FACTOR * real
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest)  # shortest first


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        length_batches([3, 4], 0)

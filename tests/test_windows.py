"""Window index math: property tests on random sequence layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtsae.errors import MtsaeError
from mtsae.train import windows as W
from mtsae.train.config import TrainConfig, Windowing


@st.composite
def layouts(draw):
    lengths = draw(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    window = draw(st.integers(min_value=1, max_value=24))
    stride = draw(st.one_of(st.just(window), st.integers(min_value=1, max_value=24)))  # the default, or any
    return offsets, window, stride


def brute_force_starts(offsets, window, stride):
    starts = []
    for i in range(len(offsets) - 1):
        s = offsets[i]
        while s + window <= offsets[i + 1]:
            starts.append(s)
            s += stride
    return np.array(starts, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_windows_are_exactly_the_eligible_starts(layout):
    offsets, window, stride = layout
    starts = W.window_starts(offsets, window, stride)
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, brute_force_starts(offsets, window, stride))
    assert W.windows_per_sequence(offsets, window, stride).sum() == len(starts)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_no_window_crosses_a_sequence_boundary(layout):
    offsets, window, stride = layout
    starts = W.window_starts(offsets, window, stride)
    seq = W.window_sequences(offsets, starts)
    seq_of_last_row = W.window_sequences(offsets, starts + window - 1)
    np.testing.assert_array_equal(seq, seq_of_last_row)  # first and last row in one sequence
    assert np.all(starts >= offsets[seq]) and np.all(starts + window <= offsets[seq + 1])


@settings(max_examples=200, deadline=None)
@given(layouts(), st.floats(min_value=0.0, max_value=0.95), st.integers(min_value=0, max_value=2**31))
def test_heldout_split_is_by_sequence_disjoint_and_deterministic(layout, fraction, seed):
    offsets, window, stride = layout
    n = len(offsets) - 1
    train, held = W.split_sequences(n, fraction, seed)
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(n))
    expected = min(max(round(fraction * n), 1 if fraction > 0 else 0), max(n - 1, 0))
    assert len(held) == expected
    again_train, again_held = W.split_sequences(n, fraction, seed)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(held, again_held)
    # Windows of the two splits come from their own sequences only.
    tr = W.window_starts(offsets, window, stride, train)
    he = W.window_starts(offsets, window, stride, held)
    assert set(W.window_sequences(offsets, tr).tolist()) <= set(train.tolist())
    assert set(W.window_sequences(offsets, he).tolist()) <= set(held.tolist())
    assert sorted(tr.tolist() + he.tolist()) == W.window_starts(offsets, window, stride).tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=2**31), st.integers(0, 50))
def test_epoch_visits_every_window_once_and_is_deterministic(n, seed, epoch):
    order = W.epoch_order(n, seed, epoch)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(order, W.epoch_order(n, seed, epoch))
    np.testing.assert_array_equal(W.epoch_order(n, seed, epoch, shuffle=False), np.arange(n))


def test_epochs_and_seeds_give_different_orders():
    orders = {tuple(W.epoch_order(100, seed, epoch)) for seed in range(3) for epoch in range(3)}
    assert len(orders) == 9


def test_split_leaves_training_sequences():
    assert len(W.split_sequences(1, 0.5, 0)[1]) == 0  # a single sequence is never held out
    assert len(W.split_sequences(10, 0.99, 0)[0]) == 1


@pytest.mark.parametrize("values,option", [
    (dict(window=0), "--window"), (dict(window=2.5), "--window"), (dict(window=True), "--window"),
    (dict(window=4, stride=0), "--stride"), (dict(stride=-3), "--stride"),
    (dict(holdout_fraction=0.0), "--holdout-fraction"), (dict(holdout_fraction=1.0), "--holdout-fraction"),
    (dict(holdout_fraction=float("nan")), "--holdout-fraction"), (dict(seed=-1), "--seed"), (dict(seed=2**64), "--seed"),
])
def test_bad_windowing_is_refused_once_by_its_one_check(values, option):
    with pytest.raises(MtsaeError, match=option):
        Windowing(**values)
    with pytest.raises(MtsaeError, match=option):  # the training config checks through it
        TrainConfig(cache="c", out="o", **values).validate()


def test_windowing_defaults_are_the_training_defaults():
    assert Windowing() == TrainConfig().windowing() == Windowing(128, 128, 0.05, 0)
    assert Windowing(window=7).stride == 7 and Windowing(window=7, stride=3).stride == 3


def test_sample_windows_is_seeded_and_distinct():
    a = W.sample_windows(100, 10, seed=3)
    assert len(set(a.tolist())) == 10 and np.array_equal(a, W.sample_windows(100, 10, seed=3))
    assert len(W.sample_windows(5, 10, seed=0)) == 5

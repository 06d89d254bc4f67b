"""The discretised vote against a re-enactment of the reference's text-file pipeline."""

from __future__ import annotations

import itertools
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from dfd.runtime.vote import (DEFAULT_VOTE_WEIGHTS, STREAMS, Vote, VoteError,
                              discretised_vote, discretised_vote_batch, one_decimal,
                              softmax_fake_probability)


def reference_scores(probs: np.ndarray, weights=(2.0, 1.0, 2.0)) -> np.ndarray:
    """inference.py writes one submission.txt per stream, ensemble_submissions.py combines them."""
    files = []
    for column in np.asarray(probs, dtype=np.float32).T:
        text = "".join(f"{float(p):.1f}\n" for p in column)  # inference.py
        files.append([float(line.strip()) for line in text.splitlines() if line.strip()])
    weighted = np.average(np.array(files), axis=0, weights=list(weights))
    rounded = np.round(weighted, 1)
    return np.array([float(f"{float(p):.1f}") for p in rounded])


def boundary_values() -> np.ndarray:
    """Every float32 nearest to 0.05, 0.15, ..., 0.95 and its two float32 neighbours, 0 and 1."""
    centres = np.array([k / 100 for k in range(5, 100, 10)], dtype=np.float32)
    up = np.nextafter(centres, np.float32(1))
    down = np.nextafter(centres, np.float32(0))
    return np.concatenate([centres, up, down, np.array([0, 1], dtype=np.float32)])


def test_stream_rounding_at_the_half_tenths_follows_the_exact_float32_value():
    # float32(0.25) and float32(0.75) are exact ties (half to even); the others are not ties
    expected = {0.05: 0.1, 0.15: 0.2, 0.25: 0.2, 0.35: 0.3, 0.45: 0.4, 0.55: 0.6, 0.65: 0.6,
                0.75: 0.8, 0.85: 0.9, 0.95: 0.9}
    for p, rounded in expected.items():
        vote = discretised_vote({"global": p, "face": p, "fusion": p})
        assert vote.rounded_streams == {"global": rounded, "face": rounded, "fusion": rounded}
        assert vote.score == rounded
    assert discretised_vote({"global": 0.25, "face": 0.25, "fusion": np.nextafter(
        np.float32(0.25), np.float32(1))}).rounded_streams["fusion"] == 0.3


def test_documented_example_and_extremes():
    vote = discretised_vote({"global": 0.2, "face": 0.3, "fusion": 0.3})
    # (2*0.2 + 0.3 + 2*0.3) / 5 = 0.26 -> 0.3
    assert vote == Vote(score=0.3, rounded_streams={"global": 0.2, "face": 0.3, "fusion": 0.3},
                        raw_mean=pytest.approx(0.26, abs=1e-7))
    assert discretised_vote({"global": 0.0, "face": 0.0, "fusion": 0.0}).score == 0.0
    assert discretised_vote({"global": 1.0, "face": 1.0, "fusion": 1.0}).score == 1.0
    # 2*0.1 + 0.9 + 2*0.1 = 1.3 -> 0.26 -> 0.3 ; 2*0.0 + 1.0 + 2*0.1 = 1.2 -> 0.24 -> 0.2
    assert discretised_vote({"global": 0.1, "face": 0.9, "fusion": 0.1}).score == 0.3
    assert discretised_vote({"global": 0.0, "face": 1.0, "fusion": 0.1}).score == 0.2


def test_weighted_mean_exactly_on_a_half_tenth_rounds_half_to_even():
    # weights 1, 1, 0: (0.2 + 0.3) / 2 is exactly 0.25 in float64 -> 0.2 (half to even)
    weights = {"global": 1.0, "face": 1.0, "fusion": 0.0}
    vote = discretised_vote({"global": 0.2, "face": 0.3, "fusion": 0.9}, weights)
    assert (0.2 + 0.3) / 2 == 0.25 and vote.score == 0.2
    # (0.6 + 0.9) / 2 = 0.75 exactly -> 0.8 (half to even)
    assert discretised_vote({"global": 0.6, "face": 0.9, "fusion": 0.0}, weights).score == 0.8
    rows = np.array(list(itertools.product(np.arange(11) / 10, repeat=3)))
    expected = reference_scores(rows, (1.0, 1.0, 0.0))
    np.testing.assert_array_equal(discretised_vote_batch(rows, weights), expected)
    # the scalar vote too: np.round is rint(x * 10) / 10, not Python's round(x, 1), which rounds the
    # exact binary value: (0.0 + 0.1) / 2 is the double just above 0.05, which round(x, 1) takes to
    # 0.1, while 0.05 * 10 is 0.5 and rint gives 0.0, the reference's score
    assert [discretised_vote(dict(zip(STREAMS, row)), weights).score for row in rows] == expected.tolist()


def test_batch_matches_reference_on_every_rounded_triple_and_boundary_triple():
    tenths = np.arange(11, dtype=np.float32) / np.float32(10)
    for values in (tenths, boundary_values()):
        rows = np.array(list(itertools.product(values, repeat=3)), dtype=np.float32)
        np.testing.assert_array_equal(discretised_vote_batch(rows), reference_scores(rows))


def test_scalar_and_batch_agree_with_reference_on_random_and_boundary_triples():
    rng = np.random.default_rng(7)
    boundary = boundary_values()
    rows = np.concatenate([
        rng.random((300, 3), dtype=np.float32),
        rng.choice(boundary, size=(300, 3)),
    ])
    expected = reference_scores(rows)
    np.testing.assert_array_equal(discretised_vote_batch(rows), expected)
    for row, score in zip(rows, expected):
        vote = discretised_vote(dict(zip(STREAMS, row)))
        assert vote.score == score
        assert vote.raw_mean == pytest.approx(np.average(row.astype(np.float64),
                                                         weights=[2, 1, 2]), abs=0)


def test_float64_input_is_taken_as_its_float32_value():
    # 0.15 as float64 is below 0.15 ("0.1"), as float32 above ("0.2"): the reference had float32
    assert f"{0.15:.1f}" == "0.1"
    assert discretised_vote({"global": 0.15, "face": 0.15, "fusion": 0.15}).score == 0.2
    assert discretised_vote_batch(np.array([[0.15, 0.15, 0.15]]))[0] == 0.2
    # just below 0.15 in float64 ("0.1"), yet the same float32 as 0.15 ("0.2"): the batch must round
    # the float32 value, and one_decimal (which the detector calls on each stream) too
    below = 0.15 - 1e-10
    assert np.float32(below) == np.float32(0.15) and f"{below:.1f}" == "0.1"
    assert discretised_vote_batch(np.array([[below, below, below]]))[0] == 0.2
    assert discretised_vote({"global": below, "face": below, "fusion": below}).score == 0.2
    assert one_decimal(0.15) == one_decimal(below) == 0.2


def test_subset_of_streams_and_custom_weights():
    vote = discretised_vote({"global": 0.71, "fusion": 0.44}, {"global": 1.0, "fusion": 3.0})
    assert vote.rounded_streams == {"global": 0.7, "fusion": 0.4}
    assert vote.score == float(f"{np.round((0.7 + 3 * 0.4) / 4, 1):.1f}") == 0.5


@pytest.mark.parametrize("weights", [(0.1, 0.2, 0.3), (0.7, 0.4, 0.1), (0.2, 0.9, 0.5)])
def test_inexact_weights_sum_in_the_reference_order(weights):
    """Weights that are not binary fractions (calibrated ones, such as 0.1, 0.2, 0.3) make the
    float64 sums inexact, so their order decides the mean's last bit and with it some x.x5
    roundings: np.average adds the products, and the weights, in stream order, and the batch vote
    (the GPU kernel's sequence) must do the same, the scalar vote agreeing."""
    rows = np.array(list(itertools.product(np.arange(11) / 10, repeat=3)))
    named = dict(zip(STREAMS, weights))
    expected = reference_scores(rows, weights)
    np.testing.assert_array_equal(discretised_vote_batch(rows, named), expected)
    assert [discretised_vote(dict(zip(STREAMS, row)), named).score for row in rows] == expected.tolist()


@pytest.mark.parametrize("probs, weights, message", [
    ({"global": float("nan"), "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS, "finite"),
    ({"global": 1.2, "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS, "[0, 1]"),
    ({"global": 0.2, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS, "streams"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": 1, "face": 1, "mouth": 1}, "mouth"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": 0, "face": 0, "fusion": 0}, "zero"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": -1, "face": 1, "fusion": 1}, "negative"),
    # weights whose sum overflows (every vote came out 0.0), and one too large for a float
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": 1e308, "face": 1e308, "fusion": 1e308},
     "finite sum"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": 10**400, "face": 1, "fusion": 1}, "finite"),
    # no streams at all: said as such, not as weights summing to zero
    ({}, {}, "must name streams among"),
    # not numbers, though float() and NumPy would parse some of them (a ValueError that named
    # neither the vote nor the weights, or a "0.5" voted on as 0.5)
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": "two", "face": 1, "fusion": 1}, "must be numbers"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": "2", "face": 1, "fusion": 1}, "must be numbers"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": None, "face": 1, "fusion": 1}, "must be numbers"),
    ({"global": 0.2, "face": 0.1, "fusion": 0.1}, {"global": True, "face": 1, "fusion": 1}, "must be numbers"),
    ({"global": "0.5", "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS, "stream probabilities must be numbers"),
    ({"global": None, "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS, "stream probabilities must be numbers"),
    # an integer too large for a float is a number, out of range (it was called "not a number")
    ({"global": 10**400, "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS,
     "stream probabilities must be finite probabilities in [0, 1]"),
    ({"global": -10**400, "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS,
     "stream probabilities must be finite probabilities in [0, 1]"),
    ({"global": 2**64, "face": 0.1, "fusion": 0.1}, DEFAULT_VOTE_WEIGHTS,
     "stream probabilities must be finite probabilities in [0, 1]"),
])
def test_vote_refuses_bad_input(probs, weights, message):
    with pytest.raises(VoteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        discretised_vote(probs, weights)


def test_numbers_numpy_keeps_as_objects_are_voted_on_as_their_float_values():
    """A Fraction, or a Python int beside one, makes an object array; they are still numbers."""
    exact = {"global": Fraction(3, 4), "face": 1, "fusion": Fraction(1, 20)}
    assert discretised_vote(exact) == discretised_vote({"global": 0.75, "face": 1.0, "fusion": 0.05})
    rows = np.array([[Fraction(3, 4), 1, Fraction(1, 20)], [0, Fraction(1, 2), 0.25]], dtype=object)
    assert discretised_vote_batch(rows).tolist() == discretised_vote_batch(
        np.array([[0.75, 1.0, 0.05], [0.0, 0.5, 0.25]])).tolist()
    with pytest.raises(VoteError, match="batch probabilities must be finite probabilities"):
        discretised_vote_batch(np.array([[10**400, 0.1, 0.1]], dtype=object))
    with pytest.raises(VoteError, match="batch probabilities must be numbers"):
        discretised_vote_batch(np.array([[Fraction(1, 2), "0.1", 0.1]], dtype=object))


def test_a_decimal_is_a_number_for_probabilities_as_for_weights():
    """Weights took a Decimal (float() does) while probabilities refused it as not a number: one
    rule now decides both. A NaN Decimal, signalling or quiet, is refused as not finite."""
    decimals = {"global": Decimal("0.75"), "face": Decimal(1), "fusion": Decimal("0.05")}
    plain = discretised_vote({"global": 0.75, "face": 1.0, "fusion": 0.05})
    assert discretised_vote(decimals) == plain
    assert discretised_vote(decimals, {name: Decimal(w) for name, w in DEFAULT_VOTE_WEIGHTS.items()}) == plain
    rows = np.array([[Decimal("0.75"), 1, Decimal("0.05")]], dtype=object)
    assert discretised_vote_batch(rows).tolist() == [plain.score]
    for nan in (Decimal("NaN"), Decimal("sNaN")):
        with pytest.raises(VoteError, match="stream probabilities must be finite probabilities"):
            discretised_vote({"global": nan, "face": 0.1, "fusion": 0.1})
        with pytest.raises(VoteError, match="vote weights must be finite"):
            discretised_vote({"global": 0.1, "face": 0.1, "fusion": 0.1}, {"global": nan, "face": 1, "fusion": 1})
    for not_a_number in (np.bool_(True), 1j):
        with pytest.raises(VoteError, match="vote weights must be numbers"):
            discretised_vote({"global": 0.1, "face": 0.1, "fusion": 0.1},
                             {"global": not_a_number, "face": 1, "fusion": 1})


def test_batch_refuses_bad_shapes():
    with pytest.raises(VoteError, match=r"\[N, 3\]"):
        discretised_vote_batch(np.zeros((4, 2)))
    with pytest.raises(VoteError, match="all three"):
        discretised_vote_batch(np.zeros((4, 3)), {"global": 1.0, "fusion": 1.0})
    with pytest.raises(VoteError, match="batch probabilities must be numbers"):
        discretised_vote_batch(np.array([["0.1", "0.2", "0.3"]]))


def test_softmax_is_within_one_float32_ulp_of_float64():
    rng = np.random.default_rng(3)
    logits = np.concatenate([
        rng.normal(0, 3, (2000, 2)),
        rng.normal(0, 40, (2000, 2)),
        [[0, 0], [100, -100], [-100, 100], [1e30, -1e30], [-3e38, 3e38], [5, 5 + 1e-6]],
    ]).astype(np.float32)
    fake = softmax_fake_probability(logits)
    assert fake.dtype == np.float32 and fake.shape == (len(logits),)
    wide = logits.astype(np.float64)
    reference = np.exp(wide[:, 1] - wide.max(1)) / np.exp(wide - wide.max(1, keepdims=True)).sum(1)
    ulp = np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(fake - reference) <= ulp)
    assert fake[-6] == np.float32(0.5) and fake[-5] == 0.0 and fake[-4] == 1.0
    assert fake[-3] == 0.0 and fake[-2] == 1.0


def test_softmax_matches_torch_float32_softmax():
    # torch's float32 softmax is itself up to ~4 ulp (17 ulp below p = 0.01) from the exact
    # value, so the comparison is absolute: a few ulp of 0.5, far below the 0.05 rounding step
    import torch

    rng = np.random.default_rng(5)
    logits = rng.normal(0, 4, (20000, 2)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].numpy()
    difference = np.abs(softmax_fake_probability(logits) - expected)
    assert difference.max() <= 4 * np.spacing(np.float32(0.5))


@pytest.mark.parametrize("dtype", [np.int32, np.uint16])
def test_softmax_takes_integer_logits(dtype):
    """Logits may be any numeric array (a quantised head can return integers, signed or not):
    integer logits give P(fake) of their values, within one float32 ulp of the float64 softmax."""
    logits = np.array([[0, 3], [2, 1], [5, 5], [7, 0]], dtype=dtype)
    fake = softmax_fake_probability(logits)
    wide = logits.astype(np.float64)
    reference = np.exp(wide[:, 1]) / np.exp(wide).sum(1)
    assert fake.dtype == np.float32 and fake[2] == np.float32(0.5)
    assert np.all(np.abs(fake - reference) <= np.spacing(reference.astype(np.float32)))


def test_softmax_refuses_bad_shapes():
    with pytest.raises(VoteError, match=r"\[N, 2\]"):
        softmax_fake_probability(np.zeros((3, 3), np.float32))

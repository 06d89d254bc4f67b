"""Stream probabilities and the reference's discretised, weighted vote.

The reference (training/inference.py, then training/ensemble_submissions.py) writes each
stream's float32 P(fake) to a text file as `f"{float(p):.1f}"`, reads the files back with
`float()`, stacks them as a [streams, images] float64 array, takes
`np.average(axis=0, weights=[2, 1, 2])`, rounds with `np.round(x, 1)` (which NumPy computes as
rint(x * 10) / 10, half to even) and writes `f"{float(x):.1f}"`. The score is therefore one of
0.0, 0.1, ..., 1.0, and a stream's probability matters only through its one-decimal rounding.
"""

from __future__ import annotations

import decimal
import numbers
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import DfdError

STREAMS = ("global", "face", "fusion")
DEFAULT_VOTE_WEIGHTS = {"global": 2.0, "face": 1.0, "fusion": 2.0}
# the rounding this vote applies, as an engine set's manifest records it: one-decimal stream
# probabilities, a weighted mean rounded to one decimal, half to even
VOTE_RULES = {"stream_decimals": 1, "score_decimals": 1, "score_rounding": "half-even"}


class VoteError(DfdError, ValueError):
    """Probabilities or weights the vote cannot use."""


@dataclass(frozen=True)
class Vote:
    score: float  # one of 0.0, 0.1, ..., 1.0
    rounded_streams: dict[str, float]  # each stream's P(fake) as the reference wrote it
    raw_mean: float  # weighted mean of the unrounded P(fake)


def softmax_fake_probability(logits: np.ndarray) -> np.ndarray:
    """[N,2] logits -> P(fake) = softmax(logits)[:, 1] as float32.

    Computed in float64 as 1 / (1 + exp(l_real - l_fake)) in the overflow-free form and rounded
    once to float32, so it is within half a float32 ulp of the exact value. torch's float32
    softmax, which the reference used, is itself a few ulp off the exact value (measured: up to
    4 ulp for P in [0.05, 0.95]) and differs between its CPU and CUDA kernels, so there is no one
    torch value to match. The two agree to about 1e-7 absolute; only a P within those ulp of a
    rounding boundary (x.x5) can be written with another digit, which moves the vote by 0.1 (see
    README, "Vote"). NaN logits give NaN, which the vote refuses.
    """
    array = np.asarray(logits)
    if array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind not in "fiu":
        raise VoteError(f"logits must be a numeric [N, 2] array (real, fake); got shape "
                        f"{array.shape} dtype {array.dtype}")
    difference = array[:, 0].astype(np.float64) - array[:, 1].astype(np.float64)
    decay = np.exp(-np.abs(difference))
    with np.errstate(invalid="ignore"):
        fake = np.where(difference <= 0, 1.0 / (1.0 + decay), decay / (1.0 + decay))
    return fake.astype(np.float32)


def stream_order_and_weights(weights: Mapping[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
    """The streams ``weights`` name, in the reference's file order, and their weights as float64;
    ``VoteError`` for weights the vote cannot use (the manifest checks a set's weights with it)."""
    unknown = set(weights) - set(STREAMS)
    if unknown or not weights:
        raise VoteError(f"vote weights must name streams among {STREAMS}; got {sorted(weights)}")
    order = tuple(name for name in STREAMS if name in weights)
    try:
        values = np.array([_weight_value(weights[name]) for name in order], dtype=np.float64)
    except OverflowError:  # an integer too large for a float (JSON's 10**400): not finite either
        raise _unusable(weights) from None
    except (TypeError, ValueError):  # "two", None: a plain float() error named neither weights nor vote
        raise VoteError(f"vote weights must be numbers; got {dict(weights)}") from None
    with np.errstate(over="ignore"):  # their sum too: 1e308 each overflows it, and every vote came out 0.0
        total = values.sum()
    if not np.all(np.isfinite(values)) or np.any(values < 0) or not 0 < total < np.inf:
        raise _unusable(weights)
    return order, values


def _weight_value(weight: object) -> float:
    """A weight as a float, by the one rule of what is a number that probabilities follow too."""
    if not _is_real_number(weight):
        raise TypeError(type(weight).__name__)
    return _real_float(weight)


def _unusable(weights: Mapping[str, float]) -> VoteError:
    return VoteError(f"vote weights must be finite, non-negative, not all zero and of a finite sum; "
                     f"got {dict(weights)}")


def _as_float32_probabilities(values: np.ndarray, what: str) -> np.ndarray:
    """The float32 values the reference rounds; float64 that came from float32 is unchanged."""
    given = np.asarray(values)
    if given.dtype == object and all(_is_real_number(value) for value in given.flat):
        # NumPy keeps a Python int beyond int64 (10**400), a Fraction or a Decimal as an object: a
        # number, which float() takes or finds too large for a probability
        try:
            given = np.array([_real_float(value) for value in given.flat]).reshape(given.shape)
        except OverflowError:
            raise _not_probabilities(values, what) from None
    if given.dtype.kind not in "fiu":  # text ("0.5" was parsed), None, booleans alone
        raise VoteError(f"{what} must be numbers; got {values} ({given.dtype})")
    probabilities = given.astype(np.float64).astype(np.float32)
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0) \
            or np.any(probabilities > 1):
        raise _not_probabilities(values, what)
    return probabilities


def _is_real_number(value: object) -> bool:
    """What the vote takes as a number, weight or probability: a real number (a Decimal too, which
    ``json.loads(parse_float=Decimal)`` gives), not text or a boolean, though float() takes "2"
    and True."""
    return isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, (bool, np.bool_))


def _real_float(value: numbers.Real | decimal.Decimal) -> float:
    """float(value); a signalling-NaN Decimal, which float() refuses, is NaN: not finite, so refused
    as such instead of as "not a number"."""
    if isinstance(value, decimal.Decimal) and value.is_snan():
        return float("nan")
    return float(value)


def _not_probabilities(values: object, what: str) -> VoteError:
    return VoteError(f"{what} must be finite probabilities in [0, 1]; got {values}")


def one_decimal(probability: float) -> float:
    """A stream's P(fake) as the reference wrote it: ``float(f"{p:.1f}")`` of the float32 value."""
    return float(f"{float(np.float32(probability)):.1f}")


def discretised_vote(probs: Mapping[str, float],
                     weights: Mapping[str, float] = DEFAULT_VOTE_WEIGHTS) -> Vote:
    """The reference vote for one image, computed the way the reference computes it.

    `probs` and `weights` name the same streams (any of global, face, fusion; they are combined
    in that order, the reference's file order). Each P(fake) is taken as float32 (the dtype the
    reference wrote), formatted with one decimal and parsed back; the parsed values, as a
    [streams, 1] column like the reference's [files, lines] array, go through
    `np.average(axis=0, weights=...)`, `np.round(., 1)` and one-decimal formatting.
    """
    order, weight_values = stream_order_and_weights(weights)
    if set(probs) != set(order):
        raise VoteError(f"probabilities are for streams {sorted(probs)} but the weights are for "
                        f"{sorted(order)}")
    probabilities = _as_float32_probabilities([probs[name] for name in order],
                                              "stream probabilities")
    rounded = [one_decimal(p) for p in probabilities]
    mean = np.average(np.array(rounded, dtype=np.float64)[:, None], axis=0,
                      weights=weight_values)
    score = float(f"{float(np.round(mean, 1)[0]):.1f}")
    raw_mean = float(np.average(probabilities.astype(np.float64), weights=weight_values))
    return Vote(score=score, rounded_streams=dict(zip(order, rounded)), raw_mean=raw_mean)


def discretised_vote_batch(probs: np.ndarray,
                           weights: Mapping[str, float] = DEFAULT_VOTE_WEIGHTS) -> np.ndarray:
    """The reference vote for N images at once: [N, 3] P(fake) (global, face, fusion) -> [N] scores.

    Same result as `discretised_vote` on every row, by arithmetic instead of strings, written as
    the exact sequence a GPU kernel must follow (all float64):
      1. p = float32 probability; v = rint(p * 10) / 10. p * 10 is exact in float64 (24 + 4
         significant bits), rint rounds half to even like the decimal formatting of an exact
         binary value, and k / 10 is the double nearest to the decimal "0.k" that float() parses.
      2. mean = ((w0 * v0 + w1 * v1) + w2 * v2) / ((w0 + w1) + w2): products first, then sums
         in stream order, as np.average's axis-0 reduction over the [streams, images] array does.
      3. score = rint(mean * 10) / 10 (np.round's definition); formatting it with one decimal
         and parsing it back returns the same double.
    """
    order, weight_values = stream_order_and_weights(weights)
    if order != STREAMS:
        raise VoteError(f"the batch vote takes all three streams {STREAMS}; weights name {order}")
    array = np.asarray(probs)
    if array.ndim != 2 or array.shape[1] != len(STREAMS):
        raise VoteError(f"batch probabilities must be an [N, 3] array (global, face, fusion); "
                        f"got shape {array.shape}")
    probabilities = _as_float32_probabilities(array, "batch probabilities")
    rounded = np.rint(probabilities.astype(np.float64) * 10.0) / 10.0
    w0, w1, w2 = weight_values
    mean = (w0 * rounded[:, 0] + w1 * rounded[:, 1] + w2 * rounded[:, 2]) / ((w0 + w1) + w2)
    return np.rint(mean * 10.0) / 10.0

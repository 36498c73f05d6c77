"""Pareto dominance and hypervolume, checked by hand and against pymoo and Optuna."""

from __future__ import annotations

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study import StudyDirection
from optuna.study._multi_objective import _is_pareto_front
from pymoo.indicators.hv import HV

from archsearch.errors import ArchsearchError
from archsearch.pareto import (
    default_reference,
    hypervolume,
    hypervolume_history,
    non_dominated,
)

MIN, MAX = "minimize", "maximize"


# --------------------------------------------------------------------------- by hand


def test_hypervolume_small_cases_by_hand() -> None:
    # staircase of three unit steps: 3 + 2 + 1
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4], [MIN, MIN]) == 6.0
    # one box
    assert hypervolume([[0, 0, 0]], [1, 2, 3], [MIN] * 3) == 6.0
    # two boxes 2x2x1 and 1x1x2 overlapping in a unit cube: 4 + 2 - 1
    assert hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2], [MIN] * 3) == 5.0
    # 4-D: two unit-overlapping boxes 2^4 and 1^4 where the second lies inside the first
    assert hypervolume([[0, 0, 0, 0], [1, 1, 1, 1]], [2, 2, 2, 2], [MIN] * 4) == 16.0
    # maximised objectives mirror the minimised case
    assert hypervolume([[3, 1], [2, 2], [1, 3]], [0, 0], [MAX, MAX]) == 6.0
    # mixed: minimise x, maximise y; reference (4, 0)
    assert hypervolume([[1, 1], [2, 2], [3, 3]], [4, 0], [MIN, MAX]) == 6.0


def test_points_not_dominating_the_reference_add_nothing() -> None:
    base = hypervolume([[1, 1]], [4, 4], [MIN, MIN])
    assert base == 9.0
    for extra in ([5, 0], [0, 5], [4, 1], [1, 4], [np.nan, 0], [5, 5]):
        assert hypervolume([[1, 1], extra], [4, 4], [MIN, MIN]) == base
    assert hypervolume([[5, 5]], [4, 4], [MIN, MIN]) == 0.0
    assert hypervolume(np.empty((0, 3)), [1, 1, 1], [MIN] * 3) == 0.0


def test_duplicates_and_dominated_points_do_not_count_twice() -> None:
    pts = [[1, 3], [1, 3], [2, 2], [2.5, 2.5], [3, 1], [3, 1]]
    assert hypervolume(pts, [4, 4], [MIN, MIN]) == 6.0


def test_non_dominated_by_hand() -> None:
    pts = [[1, 3], [2, 2], [2, 2], [3, 3], [3, 1], [np.nan, 0], [0, 4]]
    mask = non_dominated(pts, [MIN, MIN])
    # duplicates are both kept, (3,3) is dominated, NaN rows are never on the front
    assert mask.tolist() == [True, True, True, False, True, False, True]
    assert non_dominated(pts, [MAX, MAX]).tolist() == [False, False, False, True, False, False, True]
    assert non_dominated(np.empty((0, 2)), [MIN, MIN]).tolist() == []


def test_optuna_directions_are_accepted() -> None:
    dirs = [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]
    assert hypervolume([[1, 1]], [2, 0], dirs) == 1.0
    assert non_dominated([[1, 1], [2, 0]], dirs).tolist() == [True, False]


# --------------------------------------------------------------------------- vs independent code


def _brute_force_front(losses: np.ndarray) -> np.ndarray:
    n = len(losses)
    return np.array(
        [
            not any(
                np.all(losses[j] <= losses[i]) and np.any(losses[j] < losses[i])
                for j in range(n)
                if j != i
            )
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("m", [2, 3, 4])
def test_non_dominated_matches_brute_force_and_optuna(m: int) -> None:
    rng = np.random.default_rng(m)
    for _ in range(20):
        n = int(rng.integers(1, 80))
        # small integers: many ties and duplicates
        pts = rng.integers(0, 6, size=(n, m)).astype(float)
        dirs = [MIN if d else MAX for d in rng.integers(0, 2, size=m)]
        signs = np.array([1.0 if d == MIN else -1.0 for d in dirs])
        losses = pts * signs
        mask = non_dominated(pts, dirs)
        np.testing.assert_array_equal(mask, _brute_force_front(losses))
        np.testing.assert_array_equal(mask, _is_pareto_front(losses, assume_unique_lexsorted=False))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_pymoo_and_optuna_on_random_sets(m: int) -> None:
    rng = np.random.default_rng(100 + m)
    for n in (1, 2, 5, 20, 60, 150):
        pts = rng.random((n, m))
        # a reference that leaves some points outside it
        ref = np.full(m, 0.85)
        mine = hypervolume(pts, ref, [MIN] * m)
        inside = pts[np.all(pts <= ref, axis=1)]
        theirs_optuna = compute_hypervolume(inside, ref) if len(inside) else 0.0
        theirs_pymoo = HV(ref_point=ref)(pts)
        assert mine == pytest.approx(theirs_optuna, rel=1e-10, abs=1e-14), (m, n)
        assert mine == pytest.approx(theirs_pymoo, rel=1e-10, abs=1e-14), (m, n)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_with_ties_matches_pymoo(m: int) -> None:
    rng = np.random.default_rng(400 + m)
    for n in (3, 10, 40, 120):
        pts = rng.integers(0, 5, size=(n, m)).astype(float)  # shared coordinates, duplicates
        ref = np.full(m, 5.0)
        assert hypervolume(pts, ref, [MIN] * m) == pytest.approx(HV(ref_point=ref)(pts), rel=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_with_maximised_objectives_matches_negated_minimisation(m: int) -> None:
    rng = np.random.default_rng(200 + m)
    pts = rng.normal(size=(40, m))
    dirs = [MAX if j % 2 else MIN for j in range(m)]
    signs = np.array([1.0 if d == MIN else -1.0 for d in dirs])
    ref = default_reference(pts, dirs)
    losses, ref_loss = pts * signs, ref * signs
    expected = HV(ref_point=ref_loss)(losses)
    assert hypervolume(pts, ref, dirs) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_history_is_the_hypervolume_of_each_prefix(m: int) -> None:
    rng = np.random.default_rng(300 + m)
    pts = rng.random((50, m))
    pts[[4, 17, 30]] = np.nan  # failed trials
    ref = np.ones(m)
    hist = hypervolume_history(pts, ref, [MIN] * m)
    assert len(hist) == 50
    assert all(b >= a for a, b in zip(hist, hist[1:]))
    for k in (0, 3, 4, 17, 29, 49):
        prefix = pts[: k + 1]
        prefix = prefix[~np.isnan(prefix).any(axis=1)]
        expected = HV(ref_point=ref)(prefix) if len(prefix) else 0.0
        assert hist[k] == pytest.approx(expected, rel=1e-10, abs=1e-14)
    assert hist[4] == hist[3] and hist[17] == hist[16]


# --------------------------------------------------------------------------- reference point


def test_default_reference_is_front_nadir_plus_ten_percent() -> None:
    pts = [[1, 3], [3, 1], [10, 10], [np.nan, 0]]  # (10, 10) is dominated: ignored
    np.testing.assert_allclose(default_reference(pts, [MIN, MIN]), [3.2, 3.2])
    # maximised: (10, 10) alone is the front, its range is zero: moved by 10% of 10
    np.testing.assert_allclose(default_reference(pts, [MAX, MAX]), [9.0, 9.0])
    np.testing.assert_allclose(default_reference([[1, 3], [3, 1], [0, 0]], [MAX, MAX]), [0.8, 0.8])
    # a single point: 10% of its magnitude, or 10% of 1.0 at zero
    np.testing.assert_allclose(default_reference([[2.0, 0.0]], [MIN, MIN]), [2.2, 0.1])
    # every front point then adds volume
    rng = np.random.default_rng(7)
    pts = rng.random((30, 3))
    ref = default_reference(pts, [MIN] * 3)
    front = pts[non_dominated(pts, [MIN] * 3)]
    assert np.all(front < ref)
    assert hypervolume(front, ref, [MIN] * 3) > hypervolume(front[1:], ref, [MIN] * 3)


def test_default_reference_without_finite_rows_is_an_error() -> None:
    with pytest.raises(ArchsearchError, match="no trial has finite values"):
        default_reference([[np.nan, 1.0]], [MIN, MIN])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hypervolume([[1, 2]], [3, 3], ["min", MIN]),
         r"directions\[0\]: 'min' is not a direction \(allowed: minimize, maximize\)"),
        (lambda: hypervolume([[1, 2, 3]], [3, 3], [MIN, MIN]),
         r"points: 3 objective column\(s\) but 2 direction\(s\) given"),
        (lambda: hypervolume([[1, 2]], [3, 3, 3], [MIN, MIN]), r"reference: 3 value\(s\) for 2"),
        (lambda: hypervolume([[1, 2]], [3, np.inf], [MIN, MIN]), r"reference: every value must be finite"),
        (lambda: non_dominated([1, 2, 3], [MIN]), r"points: expected a 2-D array"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error(call, message) -> None:
    with pytest.raises(ArchsearchError, match=message):
        call()

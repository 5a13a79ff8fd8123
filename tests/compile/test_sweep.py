"""The side-by-side measurement: rounds, rotation, and speed-ups taken per round."""

from __future__ import annotations

import numpy as np
import pytest

from warpserve.compile import sweep


def test_every_contender_runs_in_every_round_in_rotating_order() -> None:
    order: list[str] = []
    entered: list[str] = []

    def contender(name: str) -> sweep.Contender:
        def run(inputs: dict[str, np.ndarray]) -> object:
            if not order or order[-1] != name:
                order.append(name)
            return inputs

        return sweep.Contender(name, run, lambda: entered.append(name))

    names = ["a", "b", "c"]
    inputs = {"x": np.zeros((3, 2), np.float32)}
    measured = sweep.compare([contender(n) for n in names], inputs, [1, 4], 0.0, rounds=3)
    assert [p.batch for p in measured.points["a"]] == [1, 4]
    assert all(len(measured.rounds[n][4]) == 3 for n in names)
    # Per batch: warm-up in the listed order, then rounds a b c, b c a, c a b, so no
    # contender always runs right after the same one (``order`` merges repeats).
    per_batch = ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert order == per_batch * 2
    assert entered[:3] == names  # each is set up before its own runs


def test_speedup_is_the_median_of_same_round_ratios_against_the_fastest_baseline() -> None:
    measured = sweep.Comparison(
        points={
            "v": [sweep.Point(8, 3, 1.0, 1.0, 8000.0)],
            "eager/1": [sweep.Point(8, 3, 2.2, 8.0, 3636.0)],
            "eager/2": [sweep.Point(8, 3, 3.0, 9.0, 2666.0)],
        },
        rounds={
            # Round 2 is slow for everyone (the machine was busy): the ratios stay near 2.
            "eager/1": {8: [2.0, 8.0, 2.2]},
            "eager/2": {8: [3.0, 9.0, 1.5]},  # slower overall, though fastest in round 3
            "v": {8: [1.0, 4.0, 1.0]},
        },
    )
    # Against eager/1 (the faster overall) in every round: 2.0, 2.0, 2.2.
    assert measured.speedup("v", 8, ["eager/1", "eager/2"]) == pytest.approx(2.0)
    (point,) = measured.against("v", ["eager/1", "eager/2"])
    assert point.vs_eager == pytest.approx(2.0) and point.throughput == 8000.0


def test_best_of_takes_the_faster_baseline_per_batch() -> None:
    one = [sweep.Point(1, 5, 0.1, 0.2, 10.0), sweep.Point(8, 5, 0.4, 0.5, 20.0)]
    two = [sweep.Point(1, 5, 0.2, 0.3, 5.0), sweep.Point(8, 5, 0.2, 0.3, 40.0)]
    measured = sweep.Comparison(points={"one": one, "two": two})
    assert measured.best_of(["one", "two"]) == [one[0], two[1]]

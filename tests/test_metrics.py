import math

import numpy as np
import pytest

from ccr.measure.metrics import (
    bwt,
    final_average,
    forgetting,
    forgetting_per_task,
    from_json_matrix,
    recall_at_k,
    rsum,
    rsum_matrix,
    to_json_matrix,
)

NAN = float("nan")
A = np.array([[80.0, NAN, NAN], [60.0, 70.0, NAN], [50.0, 65.0, 90.0]])


def test_forgetting_and_bwt_by_hand():
    # F_1 = max(80, 60) - 50 = 30 ; F_2 = 70 - 65 = 5
    assert forgetting_per_task(A).tolist() == [30.0, 5.0]
    assert forgetting(A) == pytest.approx(17.5)
    # BWT = mean(50 - 80, 65 - 70) = -17.5
    assert bwt(A) == pytest.approx(-17.5)
    assert final_average(A) == pytest.approx((50 + 65 + 90) / 3)


def test_forgetting_uses_the_best_earlier_value_not_the_first():
    m = np.array([[40.0, NAN, NAN], [70.0, 50.0, NAN], [55.0, 52.0, 60.0]])
    assert forgetting_per_task(m).tolist() == [15.0, -2.0]  # improvement shows as negative forgetting
    assert bwt(m) == pytest.approx(((55 - 40) + (52 - 50)) / 2)


def test_single_task_has_no_forgetting():
    m = np.array([[42.0]])
    assert forgetting(m) == 0.0 and bwt(m) == 0.0 and final_average(m) == 42.0


def test_recall_at_k_counts_first_hit():
    owners = np.array([[3, 1, 2], [0, 0, 5], [7, 8, 9]])
    truth = np.array([1, 0, 4])
    assert recall_at_k(owners, truth, [1, 2, 3]) == {1: pytest.approx(100 / 3), 2: pytest.approx(200 / 3),
                                                      3: pytest.approx(200 / 3)}


def test_metric_names_and_json_roundtrip():
    from ccr.measure.results import policy_metrics

    s = policy_metrics({"i2t": {1: A}, "t2i": {1: A}}, {"images_embedded": 3, "captions_embedded": 4, "seconds": 0.5})
    assert s["forgetting/t2i/R@1"] == pytest.approx(17.5) and s["bwt/t2i/R@1"] == pytest.approx(-17.5)
    assert s["t2i/R@1"] == pytest.approx(final_average(A)) and s["index_cost/embedded"] == 7
    j = to_json_matrix(A)
    assert j[0][1] is None and j[2][2] == 90.0
    back = from_json_matrix(j)
    assert math.isnan(back[0, 2]) and back[1, 0] == 60.0


def test_rsum_by_hand():
    assert rsum({"i2t": {1: 10.0, 5: 20.0, 10: 30.0}, "t2i": {1: 1.0, 5: 2.0, 10: 3.0}}) == 66.0
    m = rsum_matrix({"i2t": {1: A, 5: A}, "t2i": {1: A, 10: A}})
    assert m[2, 0] == 4 * 50.0 and np.isnan(m[0, 1])
    # no K of 1, 5, 10 measured: rsum adds the K there are (eval.ks=[3, 20])
    assert rsum({"i2t": {3: 10.0, 20: 20.0}, "t2i": {3: 1.0, 20: 2.0}}) == 33.0
    assert rsum_matrix({"i2t": {3: A}, "t2i": {3: A}})[2, 0] == 2 * 50.0

"""Cost-model headroom: the planner's cost model is the fit scaled by a high quantile of measured/predicted."""

from __future__ import annotations

import pytest
from factories import COST

from sglang_fair.core.headroom import Headroom, HeadroomParams


def test_factor_is_one_until_enough_samples_then_the_quantile_capped():
    h = Headroom(HeadroomParams(window=10, quantile=0.8, min_samples=5, max_factor=1.5))
    for _ in range(4):
        assert h.observe(0.1, 0.13) == 1.0  # too few samples to trust
    assert h.observe(0.1, 0.13) == pytest.approx(1.3)
    for _ in range(10):  # the window forgets: a faster machine brings the factor back down
        h.observe(0.1, 0.09)
    assert h.factor == 1.0  # never below 1: a pessimistic fit is left to the fitter
    for _ in range(10):
        h.observe(0.1, 0.5)
    assert h.factor == 1.5  # capped
    h.observe(0.0, 0.1)  # a zero prediction carries no ratio
    assert h.factor == 1.5


def test_scaled_cost_model_scales_every_term_and_rejects_bad_factors():
    s = COST.scaled(1.25)
    assert s.predict([(100, 50)], [300, 20]) == pytest.approx(1.25 * COST.predict([(100, 50)], [300, 20]))
    assert COST.scaled(1.0) is COST
    assert s.max_chunk(0.05) < COST.max_chunk(0.05)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            COST.scaled(bad)
    with pytest.raises(ValueError):
        HeadroomParams(quantile=1.0)


@pytest.mark.parametrize("n", [1, 2, 16, 63, 64])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.8, 0.99])
def test_the_quantile_is_numpys_linear_one(n, q):
    import numpy as np

    from sglang_fair.core.headroom import quantile
    x = list(np.random.default_rng(n).lognormal(0.0, 0.3, size=n))
    assert quantile(x, q) == pytest.approx(float(np.quantile(x, q)), abs=1e-12)

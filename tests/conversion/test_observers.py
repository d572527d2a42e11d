"""RangeObserver against direct computations on the whole data."""

import pytest
import torch

from adderconvert.conversion import RangeObserver


def test_range_over_batches_leaves_out_non_finite_values():
    batches = [torch.randn(4, 3, 5, 5) * 3 for _ in range(3)]
    batches[1][0, 0, 0, 0] = float("nan")
    batches[2][1, 2, 3, 4] = float("inf")
    observer = RangeObserver()
    for batch in batches:
        observer.observe(batch)
    values = torch.cat([b.flatten() for b in batches])
    values = values[torch.isfinite(values)]
    assert observer.range() == (float(values.min()), float(values.max()))


def test_per_index_range_is_the_range_of_each_index():
    x = torch.randn(6, 4, 10)
    x[2, 1, 3] = float("-inf")
    observer = RangeObserver(per_index=1)
    observer.observe(x[:3])
    observer.observe(x[3:])
    for c in range(4):
        values = x[:, c].flatten()
        values = values[torch.isfinite(values)]
        assert float(observer.low[c]) == float(values.min()) and float(observer.high[c]) == float(values.max())


def test_percentiles_of_a_full_sample_are_torch_quantiles():
    x = torch.randn(1000)
    observer = RangeObserver(sample=10_000)
    observer.observe(x[:400])
    observer.observe(x[400:])
    expected = torch.quantile(x.double(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    assert observer.percentile_range(99.0) == pytest.approx((float(expected[0]), float(expected[1])))


def test_a_sample_is_bounded_and_seeded():
    draws = []
    for _ in range(2):
        observer = RangeObserver(sample=50, generator=torch.Generator().manual_seed(3))
        observer.observe(torch.arange(1000.0))
        draws.append(torch.cat(observer.samples))
    assert len(draws[0]) == 50 and torch.equal(draws[0], draws[1])


def test_nothing_observed_is_an_error():
    observer = RangeObserver(sample=10)
    observer.observe(torch.tensor([float("nan")]))
    assert not observer.observed
    with pytest.raises(ValueError, match="no finite value"):
        observer.range()
    with pytest.raises(ValueError, match="percentiles need"):
        observer.percentile_range(99.0)
    with pytest.raises(ValueError, match="no sample"):
        RangeObserver(per_index=0, sample=5)

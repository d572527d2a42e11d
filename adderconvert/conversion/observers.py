"""The one range observer: what range of values a layer sees, as planning (the sign init's input range), INT8
calibration and the saturation diagnostics measure it (after torch.ao's observers)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RangeObserver"]


class RangeObserver:
    """Running minimum and maximum of the finite values observed, over everything or, with ``per_index``, per
    index of that dimension; with ``sample`` > 0 also a uniform random sample of at most ``sample`` finite values
    per observation, for percentile ranges.

    >>> observer = RangeObserver()
    >>> observer.observe(torch.tensor([1.0, -2.0, float("nan")]))
    >>> observer.range()
    (-2.0, 1.0)
    """

    def __init__(self, per_index: int | None = None, sample: int = 0, generator: torch.Generator | None = None):
        if sample > 0 and per_index is not None:
            raise ValueError("a per-index observer keeps no sample")
        self.per_index = per_index
        self.sample = sample
        self.generator = generator
        self.low: Tensor | None = None
        self.high: Tensor | None = None
        self.samples: list[Tensor] = []

    @property
    def observed(self) -> bool:
        """Whether any finite value was observed."""
        return self.low is not None and bool(torch.isfinite(self.low).any())

    def observe(self, x: Tensor) -> None:
        """Fold ``x``'s finite values into the range (and the sample)."""
        x = x.detach().float()
        finite = torch.isfinite(x)
        if self.per_index is None:
            values = x[finite]
            if values.numel() == 0:
                return
            low, high = values.min(), values.max()
            if self.sample > 0:
                if values.numel() > self.sample:
                    pick = torch.randint(values.numel(), (self.sample,), generator=self.generator)
                    values = values[pick.to(values.device)]
                self.samples.append(values.cpu())
        else:
            keep = self.per_index % x.dim()
            dims = tuple(d for d in range(x.dim()) if d != keep)
            if bool(finite.all()):
                low, high = x.amin(dim=dims), x.amax(dim=dims)
            else:
                low = torch.where(finite, x, torch.inf).amin(dim=dims)
                high = torch.where(finite, x, -torch.inf).amax(dim=dims)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def range(self) -> tuple[float, float]:
        """The smallest and largest value observed (over every index)."""
        if not self.observed:
            raise ValueError("no finite value was observed")
        return float(self.low.min()), float(self.high.max())

    def percentile_range(self, percentile: float) -> tuple[float, float]:
        """The ``100 - percentile`` and ``percentile`` percentiles of the sample."""
        if not self.samples:
            raise ValueError("percentiles need an observer with a sample and a finite value observed")
        values = torch.cat(self.samples).double()
        q = torch.tensor([(100 - percentile) / 100, percentile / 100], dtype=torch.float64)
        low, high = torch.quantile(values, q)
        return float(low), float(high)

"""Inputs with infinities and NaN for the kernels' tests against the float64 NumPy reference."""

import numpy as np

# (x shape, w shape, pads): image tiles, and small maps in a large batch (the CPU kernel's tiles by position).
GEOMETRIES = [((2, 4, 9, 9), (6, 4, 3, 3), (1, 1, 1, 1)), ((48, 4, 2, 2), (5, 4, 3, 3), (1, 1, 1, 1))]


def special_inputs(x_shape, w_shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normal float32 x and w with -inf, +inf and NaN in x and +inf and -inf in w at a few places."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape).astype(np.float32)
    w = rng.normal(size=w_shape).astype(np.float32)
    x.flat[rng.choice(x.size, 3, replace=False)] = -np.inf
    x.flat[rng.choice(x.size, 2, replace=False)] = np.inf
    x.flat[rng.choice(x.size, 2, replace=False)] = np.nan
    w[1, 0, 1, 1], w[3, 1, 0, 2] = np.inf, -np.inf
    return x, w


def assert_same_specials(got: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Same infinities and NaNs at the same places, finite values within rtol of max |expected|."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert np.isnan(expected).any() and np.isneginf(expected).any() and np.isfinite(expected).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got) & (got < 0), np.isneginf(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    finite = np.isfinite(expected)
    assert np.abs(got[finite] - expected[finite]).max() <= rtol * np.abs(expected[finite]).max()

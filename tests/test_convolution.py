"""convolution.fftconvolve gives scipy.signal.fftconvolve's numbers, bit for bit, in every mode."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from jointphot.convolution import fftconvolve


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("shapes", [((200, 300), (21, 21)), ((64, 65), (8, 9)), ((15, 15), (15, 15))])
def test_same_numbers_as_scipy_signal(shapes, mode):
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    expected = signal.fftconvolve(a, b, mode=mode)
    got = fftconvolve(a, b, mode=mode)
    assert got.shape == expected.shape and np.array_equal(got, expected)

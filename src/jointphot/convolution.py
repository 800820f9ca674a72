"""Convolution of real arrays by FFT: scipy.signal.fftconvolve's results without the ~1 s that
importing scipy.signal costs every process (scipy.fft is light)."""
from __future__ import annotations

import numpy as np
from scipy import fft


def fftconvolve(a, b, mode: str = "full") -> np.ndarray:
    """Convolution of the real N-d arrays a and b; mode "full", "same" (a's shape, centred as
    scipy.signal.fftconvolve) or "valid" (where b lies wholly inside a)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    full = [n + m - 1 for n, m in zip(a.shape, b.shape)]
    shape = [fft.next_fast_len(n, True) for n in full]
    spectrum = fft.rfftn(a, shape)
    spectrum *= fft.rfftn(b, shape)        # in place: tile-sized spectra add up
    out = fft.irfftn(spectrum, shape)[tuple(slice(0, n) for n in full)]
    del spectrum
    if mode == "full":
        return out
    size = {"same": a.shape, "valid": [n - m + 1 for n, m in zip(a.shape, b.shape)]}[mode]
    start = [(f - s) // 2 for f, s in zip(full, size)]
    return out[tuple(slice(s0, s0 + s) for s0, s in zip(start, size))].copy()

"""The native engine: Gaussian-mixture profiles (models.py), Levenberg-Marquardt in NumPy/SciPy.

Free parameters per source (pixel frame; the order of base.STANDARD_PARAMS):
  point:  x, y, flux
  exp/dev: x, y, flux, ln re, e1, e2        with e = (1 - ab) / (1 + ab), (e1, e2) = e (cos 2phi, sin 2phi)
  sersic: ... and n
All derivatives are analytic (models.PSFRenderer.render_unit).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import __version__
from ..models import PSFRenderer, add_stamp, overlap_slices, render_sources
from .base import (AB_RANGE, FRACDEV_RANGE, LN_RE_RATIO_RANGE, MIN_MODEL_ON_DATA, RE_RANGE, SERSIC_N_RANGE, Engine,
                   FluxDesign, FluxFit, GroupFit, PSF, Source, from_standard, to_standard)

E_MAX = (1 - AB_RANGE[0]) / (1 + AB_RANGE[0])


#: ln r_e or n within this of a bound counts as on it (PARAM_AT_BOUND), as in the Tractor engine.
BOUND_TOLERANCE = 1e-3


def _clip(start: Source, v: np.ndarray, pos_bound: float, re_max: float):
    """Clip a parameter vector to its bounds; returns (vector, at_shape_bound)."""
    v = v.copy()
    v[0] = np.clip(v[0], start.x - pos_bound, start.x + pos_bound)
    v[1] = np.clip(v[1], start.y - pos_bound, start.y + pos_bound)
    at_bound = False
    if start.kind != "point":
        lo, hi = np.log(RE_RANGE[0]), np.log(min(RE_RANGE[1], re_max))
        at_bound |= not (lo + BOUND_TOLERANCE < v[3] < hi - BOUND_TOLERANCE)
        v[3] = np.clip(v[3], lo, hi)
    if len(v) > 4:
        e = np.hypot(v[4], v[5])
        if e > E_MAX:
            v[4:6] *= E_MAX / e
            at_bound = True
    if start.kind == "sersic":
        at_bound |= not (SERSIC_N_RANGE[0] + BOUND_TOLERANCE < v[6] < SERSIC_N_RANGE[1] - BOUND_TOLERANCE)
        v[6] = np.clip(v[6], *SERSIC_N_RANGE)
    if start.kind == "comp":
        for k, (lo, hi) in ((6, FRACDEV_RANGE), (7, LN_RE_RATIO_RANGE)):
            at_bound |= not (lo + BOUND_TOLERANCE < v[k] < hi - BOUND_TOLERANCE)
            v[k] = np.clip(v[k], lo, hi)
    return v, at_bound


def _limits(start: Source, size: int, pos_bound: float, re_max: float):
    """(lower, upper) bounds of a source's parameter vector (the e1, e2 disc bound is left to _clip)."""
    lo, hi = np.full(size, -np.inf), np.full(size, np.inf)
    lo[:2] = start.x - pos_bound, start.y - pos_bound
    hi[:2] = start.x + pos_bound, start.y + pos_bound
    if start.kind != "point":
        lo[3], hi[3] = np.log(RE_RANGE[0]), np.log(min(RE_RANGE[1], re_max))
    if start.kind == "sersic":
        lo[6], hi[6] = SERSIC_N_RANGE
    if start.kind == "comp":
        (lo[6], hi[6]), (lo[7], hi[7]) = FRACDEV_RANGE, LN_RE_RATIO_RANGE
    return lo, hi


#: Largest change per step of ln re and of the Sersic index (the step of a source is scaled down to it):
#: a long linearised step overshoots to a bound, where a Sersic fit can stay in a false minimum.
MAX_STEP_LN_RE = 0.5
MAX_STEP_N = 0.3


def _limited(step):
    """A source's step scaled so that |d ln re| <= MAX_STEP_LN_RE and |d n| <= MAX_STEP_N."""
    scale = 1.0
    if len(step) > 3:
        scale = min(scale, MAX_STEP_LN_RE / max(abs(step[3]), 1e-300))
    if len(step) > 6:   # n, or a comp's bulge fraction
        scale = min(scale, MAX_STEP_N / max(abs(step[6]), 1e-300))
    if len(step) > 7:   # a comp's ln re_ratio
        scale = min(scale, MAX_STEP_LN_RE / max(abs(step[7]), 1e-300))
    return step * scale if scale < 1.0 else step


def _pinned(v, lo, hi, grad, comp_fracs=()):
    """Parameters at a bound that the chi^2 gradient pushes outward (held fixed: an active set); and
    the ln re_ratio of a comp whose fracdev is at 0 or 1 (the model no longer depends on it), with the
    fracdev (indices of the fracdevs in `comp_fracs`)."""
    tol = 1e-9 * np.maximum(1.0, np.abs(v))
    out = ((v <= lo + tol) & (grad < 0)) | ((v >= hi - tol) & (grad > 0))
    for k in comp_fracs:
        if v[k] <= lo[k] + 1e-6 or v[k] >= hi[k] - 1e-6:
            out[k] = out[k + 1] = True
    return out


class NativeEngine(Engine):
    """NumPy/SciPy engine; see the module docstring."""

    name = "native"

    @property
    def version(self) -> str:
        return f"jointphot-native {__version__}"

    def render(self, shape, psf: PSF, sources: Sequence[Source]) -> np.ndarray:
        return render_sources(shape, PSFRenderer(psf), sources)

    # --- non-linear group fit -------------------------------------------------------------
    def fit_group(self, image, invvar, psf, sources, *, max_iter=15, dlnp_tol=1e-3, pos_bound=1.0,
                  re_max=None) -> GroupFit:
        renderer = PSFRenderer(psf)
        re_max = [np.inf] * len(sources) if re_max is None else list(re_max)
        starts = [s.copy(re=min(s.re, r)) if s.is_galaxy else s.copy() for s, r in zip(sources, re_max)]
        ny, nx = image.shape
        # nothing beyond the box is fitted: stamps need not reach further than its far corner
        halves = [renderer.stamp_half_size(s, reach=np.hypot(max(s.x, nx - s.x), max(s.y, ny - s.y)) + pos_bound)
                  for s in starts]
        vecs = [to_standard(s) for s in starts]
        sizes = [len(v) for v in vecs]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        good = invvar > 0
        weight = np.sqrt(invvar[good])
        data = image[good]
        good_index = np.full(image.shape, -1)
        good_index[good] = np.arange(good.sum())
        n_par = int(offsets[-1])

        def evaluate(vectors, jacobian: bool):
            """Weighted residuals, Jacobian d model / d params (weighted, good pixels only), model."""
            model = np.zeros(image.shape)
            jac = np.zeros((data.size, n_par)) if jacobian else None
            for i, (src0, v, half) in enumerate(zip(starts, vectors, halves)):
                src = from_standard(src0, v)
                if not jacobian:
                    st, x0, y0 = renderer.render_unit(src, half, clip=image.shape)
                    add_stamp(model, st, x0, y0, src.flux)
                    continue
                st, grads, x0, y0 = renderer.render_unit(src, half, with_gradient=True, clip=image.shape)
                add_stamp(model, st, x0, y0, src.flux)
                sl_img, sl_st = overlap_slices(image.shape, st.shape, x0, y0)
                if sl_img is None:
                    continue
                rows = good_index[sl_img]
                use = rows >= 0
                rows = rows[use]
                # d model / d (x, y, flux, shape...): the source's columns of the Jacobian at once
                derivs = np.stack([grads[0], grads[1], st, *grads[2:]])[(slice(None),) + sl_st][:, use]
                derivs[[0, 1, *range(3, len(derivs))]] *= src.flux
                jac[rows, offsets[i]:offsets[i + 1]] = (derivs * weight[rows]).T
            resid = (data - model[good]) * weight
            return resid, jac, model

        limits = [_limits(s, n, pos_bound, r) for s, n, r in zip(starts, sizes, re_max)]
        lower = np.concatenate([lo for lo, _ in limits])
        upper = np.concatenate([hi for _, hi in limits])
        comp_fracs = [offsets[i] + 6 for i, s in enumerate(starts) if s.kind == "comp"]
        resid, jac, _ = evaluate(vecs, True)
        chi2 = float(resid @ resid)
        lam = 1e-3
        n_iter = 0
        converged = False
        at_bound = [False] * len(starts)
        for n_iter in range(1, max_iter + 1):
            hess = jac.T @ jac
            grad = jac.T @ resid
            # parameters pinned at a bound stay there; the step is solved for the others
            free = ~_pinned(np.concatenate(vecs), lower, upper, grad, comp_fracs)
            improved = False
            for _ in range(10):
                damp = hess + lam * np.diag(np.diag(hess) + 1e-12)
                step = np.zeros(n_par)
                sub = damp[np.ix_(free, free)]
                try:
                    step[free] = np.linalg.solve(sub, grad[free])
                except np.linalg.LinAlgError:
                    step[free] = np.linalg.lstsq(sub, grad[free], rcond=None)[0]
                trial, trial_bound = [], []
                for i, (src0, v) in enumerate(zip(starts, vecs)):
                    tv, b = _clip(src0, v + _limited(step[offsets[i]:offsets[i + 1]]), pos_bound, re_max[i])
                    trial.append(tv)
                    trial_bound.append(b)
                t_resid, _, _ = evaluate(trial, False)
                t_chi2 = float(t_resid @ t_resid)
                if np.isfinite(t_chi2) and t_chi2 < chi2:
                    improved = True
                    break
                lam *= 4.0
            if not improved:                       # no improving step: at the optimum
                converged = True
                break
            dlnp = 0.5 * (chi2 - t_chi2)
            vecs, at_bound = trial, trial_bound
            lam = max(lam / 3.0, 1e-7)
            resid, jac, _ = evaluate(vecs, True)
            chi2 = float(resid @ resid)
            if dlnp < dlnp_tol:
                converged = True
                break
        # the covariance of the parameters not pinned at a bound (pinned r_e or n are held fixed;
        # positions never are: their bound only guards the optimiser)
        free = ~_pinned(np.concatenate(vecs), lower, upper, jac.T @ resid, comp_fracs)
        free[np.concatenate([[o, o + 1] for o in offsets[:-1]])] = True
        cov = np.zeros((n_par, n_par))
        cov[np.ix_(free, free)] = _inverse((jac.T @ jac)[np.ix_(free, free)])
        errs = np.sqrt(np.clip(np.diag(cov), 0, None))
        fitted, errors = [], []
        for i, (src0, v) in enumerate(zip(starts, vecs)):
            fitted.append(from_standard(src0, v))
            e = errs[offsets[i]:offsets[i + 1]]
            errors.append(_named_errors(src0, v, e))
        ndof = int(good.sum()) - int(offsets[-1])
        covs = [cov[offsets[i]:offsets[i + 1], offsets[i]:offsets[i + 1]] for i in range(len(starts))]
        # flux weights: jac is d model / d p x sqrt(invvar), so jac @ cov[:, flux] x sqrt(invvar) is invvar x
        # the Jacobian x the flux column of the covariance
        flux_weights = []
        for i in range(len(starts)):
            w = np.zeros(image.shape)
            w[good] = (jac @ cov[:, offsets[i] + 2]) * weight
            flux_weights.append(w)
        return GroupFit(fitted, errors, n_iter, converged, chi2, ndof, at_bound, covs, flux_weights)

    # --- linear flux solve -----------------------------------------------------------------
    def solve_fluxes(self, image, invvar, psf, sources) -> FluxFit:
        return self.flux_design(invvar, psf, sources).solve(image)

    def flux_design(self, invvar, psf, sources) -> "NativeFluxDesign":
        return NativeFluxDesign(self, invvar, psf, sources)


class NativeFluxDesign(FluxDesign):
    """The native FluxDesign: the sources' unit stamps, the normal matrix and its inverse are computed once."""

    def __init__(self, engine, invvar, psf, sources):
        super().__init__(engine, invvar, psf, sources)
        renderer = PSFRenderer(psf)
        n = len(self.sources)
        good = invvar > 0
        #: per source: (unit stamp, x0, y0) on its whole stamp, and (image slices, stamp part) on the image or None
        self.stamps, self.parts = [], []
        self.masked_frac = np.ones(n)
        for i, src in enumerate(self.sources):
            st, x0, y0 = renderer.render_unit(src, renderer.stamp_half_size(src))
            self.stamps.append((st, x0, y0))
            sl_img, sl_st = overlap_slices(invvar.shape, st.shape, x0, y0)
            if sl_img is None:
                self.parts.append(None)
                continue
            part = st[sl_st]
            total = st.sum()
            self.masked_frac[i] = 1.0 - (part * good[sl_img]).sum() / total if total > 0 else 1.0
            self.parts.append((sl_img, part))
        # normal equations from overlapping stamps only
        ata = np.zeros((n, n))
        for i in range(n):
            if self.parts[i] is None:
                continue
            sl_i, p_i = self.parts[i]
            for j in range(i, n):
                if self.parts[j] is None:
                    continue
                inter = _intersect(sl_i, self.parts[j][0])
                if inter is None:
                    continue
                a = _sub(p_i, sl_i, inter) * invvar[inter]
                ata[i, j] = ata[j, i] = (a * _sub(self.parts[j][1], self.parts[j][0], inter)).sum()
        self.valid = (np.diag(ata) > 0) & (1.0 - self.masked_frac > MIN_MODEL_ON_DATA)
        self.idx = np.flatnonzero(self.valid)
        self.cov = np.full((n, n), np.nan)
        if self.idx.size:
            self.cov[np.ix_(self.idx, self.idx)] = _inverse(ata[np.ix_(self.idx, self.idx)])

    def solve(self, image) -> FluxFit:
        n = len(self.sources)
        invvar = self.invvar
        good = invvar > 0
        atb = np.zeros(n)
        for i, part in enumerate(self.parts):
            if part is not None:
                sl_i, p_i = part
                atb[i] = (invvar[sl_i] * p_i * image[sl_i]).sum()
        flux = np.full(n, np.nan)
        if self.idx.size:
            flux[self.idx] = self.cov[np.ix_(self.idx, self.idx)] @ atb[self.idx]
        model = self.model(np.where(np.isfinite(flux), flux, 0.0))
        chi2 = float((invvar[good] * (image[good] - model[good]) ** 2).sum())
        return FluxFit(flux, self.cov.copy(), chi2, int(good.sum()) - int(self.valid.sum()),
                       self.valid & np.isfinite(flux), self.masked_frac.copy())

    def model(self, fluxes) -> np.ndarray:
        model = np.zeros(self.invvar.shape)
        for (st, x0, y0), f in zip(self.stamps, fluxes):
            add_stamp(model, st, x0, y0, f)
        return model


def _named_errors(src0: Source, v: np.ndarray, e: np.ndarray) -> dict:
    """Errors of the physical parameters (x, y, flux, re, ab, phi, n) from the vector errors."""
    out = {"x": e[0], "y": e[1], "flux": e[2]}
    if src0.kind != "point":
        out["re"] = np.exp(v[3]) * e[3]
    if len(v) > 4:
        ee = np.hypot(v[4], v[5])
        # ab = (1-e)/(1+e): d ab / d e = -2/(1+e)^2; the modulus error ~ rms of e1, e2 errors
        e_err = np.sqrt(0.5 * (e[4] ** 2 + e[5] ** 2))
        out["ab"] = 2.0 / (1 + ee) ** 2 * e_err
        out["phi"] = np.degrees(0.5 * e_err / max(ee, 1e-3))
    if src0.kind == "sersic":
        out["n"] = e[6]
    if src0.kind == "comp":
        out["fracdev"] = e[6]
    return {k: float(val) for k, val in out.items()}


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive (semi-)definite matrix (pseudo-inverse if singular)."""
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(matrix)


def _intersect(a, b):
    ya, yb = max(a[0].start, b[0].start), min(a[0].stop, b[0].stop)
    xa, xb = max(a[1].start, b[1].start), min(a[1].stop, b[1].stop)
    if ya >= yb or xa >= xb:
        return None
    return slice(ya, yb), slice(xa, xb)


def _sub(arr, sl_arr, inter):
    """Part of `arr` (placed at image slices sl_arr) inside the image slices `inter`."""
    return arr[inter[0].start - sl_arr[0].start:inter[0].stop - sl_arr[0].start,
               inter[1].start - sl_arr[1].start:inter[1].stop - sl_arr[1].start]

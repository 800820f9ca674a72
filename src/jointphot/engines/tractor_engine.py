"""The Tractor engine: the engine interface of engines/base.py on top of the Tractor
(github dstndstn/tractor, pinned release dr10.6; see docs/tractor.md).

The Tractor is optional: importing this module never fails.  :func:`tractor_available`
says whether the Tractor can be used here (and why not); :class:`TractorEngine` raises
:class:`~jointphot.errors.JointphotError` with that reason when it cannot.

Mapping (all in the pixel frame of the image being fitted, ``NullWCS`` + ``PixPos``, so
1 Tractor "arcsec" = 1 pixel and the Tractor's RA/Dec axes are +x/+y):

* sources: point -> ``PointSource``; exp -> ``ExpGalaxy``; rex -> ``ExpGalaxy`` with its
  ellipticity (ee1, ee2) frozen at 0 (legacypipe's RexGalaxy); dev -> ``DevGalaxy``;
  sersic -> ``SersicGalaxy`` with ``SersicIndex`` bounded to ``base.SERSIC_N_RANGE``.
  Fluxes are ``Flux`` in image counts with ``NullPhotoCal``.  By default (profiles='exact')
  the galaxy classes are thin subclasses whose getProfile() returns jointphot's Sersic
  mixtures (models.sersic_mixture, as the native engine: every profile softened to zero
  between 7 and 8 r_e), so that both engines fit one profile family; the Tractor's own exp
  mixture is cut at 3-4 r_e and its few-component Sersic mixtures differ by up to a few %.
* shapes: ``EllipseESoft`` (log r_e, ee1, ee2).  With ``NullWCS`` the Tractor's major axis
  points along (sin theta, cos theta) in (x, y), theta = atan2(e2, e1) / 2, so
  ``theta = 90 deg - phi`` for jointphot's phi (CCW from +x towards +y).  r_e is the
  half-light radius of the major axis in both.
* PSFs: 'fwhm' -> ``NCircularGaussianPSF`` with sigma^2 = sigma_pix^2 + 1/12 (the Tractor
  samples its Gaussians at pixel centres; base.PSF is pixel-integrated, and a box of one
  pixel adds 1/12 px^2 of variance); 'fits' and 'psfex' -> ``HybridPixelizedPSF`` of the
  (already resampled, pixel-integrated, position-evaluated) ``PSF.image`` with a Gaussian of
  its second moments for wide galaxy components.  Point sources and galaxies are shifted
  to sub-pixel positions in Fourier space (subpixel_shift='fourier') instead of with the
  Tractor's Lanczos-3 kernel, which broadens the model and biases fluxes low (0.3-0.7 %
  for point sources, 0.1-0.3 % for compact galaxies).
* fits: the Tractor's ``ConstrainedOptimizer`` (LSQR step + line search that respects
  parameter bounds), one ``optimize()`` call per step, stopping when dlnp < tol;
  positions bounded to +- pos_bound px around the start.  Errors come from the inverse of
  the full Fisher matrix J^T W J built from the Tractor's own parameter derivatives,
  propagated to (re, ab, phi) with the Jacobian of the shape parameterisation -- not from
  the LSQR diagonal estimate the original wrapper used.
* LR fluxes: the Tractor's unit-flux derivatives of all sources, one joint weighted
  linear least-squares solve, full covariance.

The 2026 galaxy-derivative bug (NullWCS + PixPos galaxy position derivatives 3600x too
large; upstream HEAD since 2026-02-10, tags dr10.9 / dr11.x) is checked at construction:
:func:`galaxy_derivative_check` compares the Tractor's galaxy x-derivative with a finite
difference of its own model; a mismatch raises.  Use dr10.6.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from jointphot.engines.base import (AB_RANGE, FIXED_SERSIC_N, FRACDEV_RANGE, KINDS, LN_RE_RATIO_RANGE, MIN_MODEL_ON_DATA,
                                    RE_RANGE, SERSIC_N_RANGE, PSF, Engine, FluxFit, GroupFit, Source, to_standard)
from jointphot.errors import JointphotError

#: The Tractor release jointphot is tested against.
PINNED_TRACTOR = "dr10.6"

#: Largest change of the Sersic index in one optimiser step.  The Tractor's default (0.1)
#: needs 20 steps to go from the start value n = 2 to n = 4, so a quarter of Sersic fits hit
#: the 15-step limit unconverged (and biased); the line search keeps larger steps safe.
SERSIC_N_MAXSTEP = 1.0

#: Position step [px] of the Tractor's forward-difference derivatives from which the covariance and the
#: flux weights are made (the optimiser keeps the Tractor's 0.1 px).  With 0.1 px the position columns were
#: ~0.6 % off the derivative (flux weights that answered to a position shift, test_engines); 0.01, the
#: Tractor's own step for shapes, leaves 0.06 %; below ~0.003 px its float32 rendering's round-off takes
#: over.  Flux errors change by 0.02 %.
COVARIANCE_POS_STEP = 0.01


def patch_nre(n: float) -> float:
    """Galaxy patches extend to this many r_e (plus the PSF radius), capped at the image size.

    The Tractor's default is 8 r_e for Sersic/dev, which drops 1e-3 of a dev mixture's flux;
    4 + 1.5 n loses < 1e-4 of the Tractor's mixtures for every n (checked for n = 1..4).
    """
    return 4.0 + 1.5 * float(n)

_tractor = None  # the imported module namespace (lazy)


def tractor_available() -> Tuple[bool, str]:
    """(True, version) when the Tractor imports and works here, else (False, reason)."""
    try:
        import tractor  # noqa: F401
        from tractor import galaxy, sersic, ellipses, constrained_optimizer  # noqa: F401
        from tractor.psf import PixelizedPSF, NCircularGaussianPSF  # noqa: F401
        import astrometry.util.miscutils  # noqa: F401  (the Tractor renders through it)
    except Exception as exc:  # ImportError, or a compiled module built for another numpy
        return False, f"{type(exc).__name__}: {exc}"
    return True, _tractor_version()


def _tractor_version() -> str:
    try:
        from tractor.version import git_version
        if git_version:
            return str(git_version)
    except Exception:
        pass
    import tractor
    return str(getattr(tractor, "__version__", "unknown"))


def _import():
    global _tractor
    if _tractor is None:
        import types
        from tractor import (Image, Tractor, PointSource, PixPos, Flux, NullWCS, NullPhotoCal,
                             ConstantSky)
        from tractor.psf import PixelizedPSF, NCircularGaussianPSF, HybridPixelizedPSF, GaussianMixturePSF
        from tractor.galaxy import ExpGalaxy, DevGalaxy, FracDev, disable_galaxy_cache
        from tractor.utils import ScalarParam
        from tractor import mixture_profiles
        from tractor.sersic import SersicGalaxy, SersicIndex
        from tractor.ellipses import EllipseESoft
        from tractor.constrained_optimizer import ConstrainedOptimizer
        ns = {k: v for k, v in locals().items() if k != "types"}
        ns.update(_exact_profile_classes(ExpGalaxy, DevGalaxy, SersicGalaxy, mixture_profiles))
        ns["CompGalaxy"] = _comp_class(ExpGalaxy, DevGalaxy)
        ns["ExactCompGalaxy"] = _comp_class(ns["ExactExpGalaxy"], ns["ExactDevGalaxy"])
        ns.update(_fourier_shift_psf_class(PixelizedPSF))
        _tractor = types.SimpleNamespace(**ns)
        # The galaxy cache keys on (position, shape, PSF hash); it only costs memory here.
        disable_galaxy_cache()
    return _tractor


def _exact_profile_classes(ExpGalaxy, DevGalaxy, SersicGalaxy, mixture_profiles):
    """The Tractor's galaxy classes with jointphot's Sersic mixtures (models.sersic_mixture).

    The Tractor's own exp mixture is fitted to SDSS's exponential cut at 3-4 r_e (3 % less
    light than jointphot's 7-8 r_e cut) and its Sersic mixtures have a few components, so the
    native engine would disagree with it.  These subclasses change only getProfile():
    parameters, derivatives, convolution and optimiser are the Tractor's.
    """
    from jointphot import models

    def mixture(n):
        amps = models.sersic_mixture(n)
        keep = amps > 1e-7
        a = amps[keep] / amps[keep].sum()
        var = models.MOG_SIGMAS[keep] ** 2
        return mixture_profiles.MixtureOfGaussians(a, np.zeros((a.size, 2)), var)

    exp_mix = mixture(FIXED_SERSIC_N["exp"])
    dev_mix = mixture(FIXED_SERSIC_N["dev"])

    class ExactExpGalaxy(ExpGalaxy):
        def getProfile(self):
            return exp_mix

    class ExactDevGalaxy(DevGalaxy):
        def getProfile(self):
            return dev_mix

    cache = {}

    class ExactSersicGalaxy(SersicGalaxy):
        def getProfile(self):
            n = float(self.sersicindex.val)
            mix = cache.get(n)
            if mix is None:
                if len(cache) > 4096:
                    cache.clear()
                mix = cache[n] = mixture(n)
            return mix

        def copy(self):
            return ExactSersicGalaxy(self.pos.copy(), self.brightness.copy(), self.shape.copy(),
                                     self.sersicindex.copy())

    return dict(ExactExpGalaxy=ExactExpGalaxy, ExactDevGalaxy=ExactDevGalaxy,
                ExactSersicGalaxy=ExactSersicGalaxy)


def _comp_class(ExpCls, DevCls):
    """The Tractor source of jointphot's 'comp' (base.KINDS): an `ExpCls` disc (pos, brightness,
    shape) plus a `DevCls` bulge on the same ellipse holding the fraction fracDev of the flux, its
    log r_e larger by lnRatio (<= 0).  Parameters in base.STANDARD_PARAMS order: pos, brightness,
    shape, fracDev, lnRatio.  Derivatives by forward differences, as the Tractor's own galaxies.
    (The Tractor's FixedCompositeGalaxy gives the bulge a shape of its own.)"""
    from tractor.galaxy import FracDev, Galaxy
    from tractor.patch import ModelMask, add_patches
    from tractor.utils import ScalarParam

    class CompGalaxy(ExpCls):
        def __init__(self, pos, brightness, shape, fracDev, lnRatio):
            fracDev = fracDev if isinstance(fracDev, ScalarParam) else FracDev(float(fracDev))
            if not isinstance(lnRatio, ScalarParam):
                lnRatio = ScalarParam(float(lnRatio))
                lnRatio.stepsize = 0.01
            super().__init__(pos, brightness, shape, fracDev, lnRatio)

        @staticmethod
        def getNamedParams():
            return dict(pos=0, brightness=1, shape=2, fracDev=3, lnRatio=4)

        def getName(self):
            return "CompGalaxy"

        def _parts(self):
            """(disc, bulge) galaxies sharing this one's position and brightness."""
            bulge_shape = self.shape.copy()
            bulge_shape.logre = self.shape.logre + float(self.lnRatio.getValue())
            disc, bulge = ExpCls(self.pos, self.brightness, self.shape), DevCls(self.pos, self.brightness, bulge_shape)
            if hasattr(self, "halfsize"):
                disc.halfsize = bulge.halfsize = self.halfsize
            return disc, bulge

        def getUnitFluxModelPatch(self, img, px=None, py=None, minval=0.0, modelMask=None, **kwargs):
            f = float(self.fracDev.getValue())
            out = None
            for part, weight in zip(self._parts(), (1.0 - f, f)):
                patch = part.getUnitFluxModelPatch(img, px=px, py=py, minval=minval, modelMask=modelMask, **kwargs)
                if patch is not None and weight != 0.0:
                    patch *= weight
                    out = add_patches(out, patch)
            return out

        def getParamDerivatives(self, img, modelMask=None, **kwargs):
            derivs = Galaxy.getParamDerivatives(self, img, modelMask=modelMask, **kwargs)   # pos, brightness, shape
            if len(derivs) == self.numberOfParams():      # no model, or fracDev and lnRatio frozen
                return derivs
            counts = img.getPhotoCal().brightnessToCounts(self.brightness)
            px, py = img.getWcs().positionToPixel(self.getPosition(), self)
            minval = img.modelMinval / counts if counts > 0 else None
            patch0 = self.getUnitFluxModelPatch(img, px=px, py=py, minval=minval, modelMask=modelMask, **kwargs)
            if modelMask is None:
                modelMask = ModelMask.fromExtent(*patch0.getExtent())
            for name in ("fracDev", "lnRatio"):
                if self.isParamFrozen(name):
                    continue
                param = getattr(self, name)
                old, step = param.getValue(), param.stepsize
                param.setValue(old + step)
                patchx = self.getUnitFluxModelPatch(img, px=px, py=py, minval=minval, modelMask=modelMask, **kwargs)
                param.setValue(old)
                if patchx is None or counts == 0:
                    derivs.append(None)
                    continue
                d = (patchx - patch0) * (counts / step)
                d.setName(f"d(comp)/d({name})")
                derivs.append(d)
            return derivs

        def copy(self):
            return CompGalaxy(self.pos.copy(), self.brightness.copy(), self.shape.copy(), self.fracDev.copy(),
                              self.lnRatio.copy())

    return CompGalaxy


def _fourier_shift_psf_class(PixelizedPSF):
    """PixelizedPSF whose point sources are shifted to sub-pixel positions in Fourier space.

    The Tractor shifts a pixelised PSF with a Lanczos-3 kernel, which broadens it: for an
    ePSF of sigma 1-1.6 px a point source half a pixel off the grid is fitted 0.3-0.7 % low
    (9 sigma for an HR star at S/N 1500 on the simulated field).  A Fourier shift is exact
    for a band-limited ePSF and is what the native engine does.  The PSF is zero-padded
    first, so its wings do not wrap around.  (Galaxies: see `fourier_shift_image`.)
    """
    from tractor.patch import Patch

    pad = 4

    class FourierShiftPixelizedPSF(PixelizedPSF):
        def getPointSourcePatch(self, px, py, minval=0., modelMask=None, radius=None, **kwargs):
            img = self.img.astype(float)
            H, W = img.shape
            ix, iy = int(round(float(px))), int(round(float(py)))
            dx, dy = float(px) - ix, float(py) - iy
            big = np.zeros((H + 2 * pad, W + 2 * pad))
            big[pad:pad + H, pad:pad + W] = img
            shifted = fourier_shift_image(big, dx, dy)
            x0, y0 = ix - W // 2 - pad, iy - H // 2 - pad
            if modelMask is None:
                return Patch(x0, y0, shifted)
            mh, mw = modelMask.shape
            mx0, my0 = modelMask.x0, modelMask.y0
            out = np.zeros((mh, mw), np.float32)
            ya, yb = max(my0, y0), min(my0 + mh, y0 + shifted.shape[0])
            xa, xb = max(mx0, x0), min(mx0 + mw, x0 + shifted.shape[1])
            if ya >= yb or xa >= xb:
                return None
            out[ya - my0:yb - my0, xa - mx0:xb - mx0] = shifted[ya - y0:yb - y0, xa - x0:xb - x0]
            return Patch(mx0, my0, out)

        def copy(self):
            return FourierShiftPixelizedPSF(self.img.copy())

    return dict(FourierShiftPixelizedPSF=FourierShiftPixelizedPSF)


def fourier_shift_image(img, dx, dy, inplace=False, **_ignored):
    """`img` shifted by (+dx, +dy) px in Fourier space, as a periodic image (float32).

    Drop-in for ``tractor.psf.lanczos_shift_image`` while the Tractor renders a galaxy:
    there the image is the inverse FFT of (galaxy FT x PSF FT) on its FFT box, so it is
    periodic and the Fourier shift is exact, where Lanczos-3 broadens the model (fluxes of
    compact galaxies 0.1-0.3 % low, several sigma at LR S/N of a few hundred).
    """
    arr = np.asarray(img, dtype=float)
    ky = np.fft.fftfreq(arr.shape[0])
    kx = np.fft.rfftfreq(arr.shape[1])
    phase = np.exp(-2j * np.pi * dy * ky)[:, None] * np.exp(-2j * np.pi * dx * kx)[None, :]   # separable
    out = np.fft.irfft2(np.fft.rfft2(arr) * phase, s=arr.shape).astype(np.float32)
    if inplace:
        img[:, :] = out
    return out


@contextlib.contextmanager
def _galaxy_fourier_shift():
    """While active, the Tractor's galaxy renderer (tractor.galaxy, which imports
    ``tractor.psf.lanczos_shift_image`` at each call) shifts with `fourier_shift_image`."""
    import tractor.psf as tractor_psf
    saved = tractor_psf.lanczos_shift_image
    tractor_psf.lanczos_shift_image = fourier_shift_image
    try:
        yield
    finally:
        tractor_psf.lanczos_shift_image = saved


# --- shape parameterisation -------------------------------------------------------------------

def shape_to_esoft(re: float, ab: float, phi: float) -> Tuple[float, float, float]:
    """(log r_e, ee1, ee2) of the Tractor's EllipseESoft for jointphot's (re, ab, phi)."""
    ab = float(np.clip(ab, AB_RANGE[0], 1.0))
    e = (1.0 - ab) / (1.0 + ab)
    ee = -math.log(1.0 - e)
    two_theta = math.radians(2.0 * (90.0 - phi))
    return math.log(max(re, 1e-6)), ee * math.cos(two_theta), ee * math.sin(two_theta)


def esoft_to_shape(logre: float, ee1: float, ee2: float) -> Tuple[float, float, float]:
    """Inverse of :func:`shape_to_esoft`: (re, ab, phi) with phi in (-90, 90]."""
    ee = math.hypot(ee1, ee2)
    e = 1.0 - math.exp(-ee)
    ab = (1.0 - e) / (1.0 + e)
    theta = math.degrees(math.atan2(ee2, ee1) / 2.0)
    phi = 90.0 - theta
    phi -= 180.0 * math.ceil((phi - 90.0) / 180.0)   # in (-90, 90], as the native engine
    return math.exp(logre), ab, phi


def _standard_jacobian(p: Sequence[float]) -> np.ndarray:
    """d(ln re, e1, e2) / d(logre, ee1, ee2): EllipseESoft to base.STANDARD_PARAMS, central differences."""
    def standard(q):
        re, ab, phi = esoft_to_shape(*q)
        return np.array(to_standard(Source("exp", 0.0, 0.0, 1.0, re, ab, phi))[3:6])

    J = np.zeros((3, 3))
    for j in range(3):
        lo, hi = list(p), list(p)
        lo[j] -= 1e-6
        hi[j] += 1e-6
        J[:, j] = (standard(hi) - standard(lo)) / 2e-6
    return J


def _shape_jacobian(p: Sequence[float]) -> np.ndarray:
    """d(re, ab, phi) / d(logre, ee1, ee2) by central differences (phi wrapped)."""
    J = np.zeros((3, 3))
    for j in range(3):
        h = 1e-6
        lo = list(p)
        hi = list(p)
        lo[j] -= h
        hi[j] += h
        a = np.array(esoft_to_shape(*lo))
        b = np.array(esoft_to_shape(*hi))
        d = b - a
        d[2] = (d[2] + 90.0) % 180.0 - 90.0
        J[:, j] = d / (2 * h)
    return J


# --- the engine ------------------------------------------------------------------------------

def _with_shift_context(method):
    """Run an engine method inside the engine's shift_context()."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.shift_context():
            return method(self, *args, **kwargs)
    return wrapper


class TractorEngine(Engine):
    """Engine on top of the Tractor (see the module docstring for the mapping)."""

    name = "tractor"

    def __init__(self, profiles: str = "exact", subpixel_shift: str = "fourier", check_derivatives: bool = True):
        """profiles: 'exact' (default) renders jointphot's truncated Sersic profiles (its
        mixtures, as the native engine) through the Tractor's galaxy classes; 'tractor' uses the Tractor's
        own (truncated) exp/dev/Sersic mixtures unchanged.
        subpixel_shift: 'fourier' (default) shifts point sources (a pixelised PSF) and
        galaxies (the Tractor's FFT rendering) to their sub-pixel positions in Fourier space;
        'lanczos' keeps the Tractor's Lanczos-3 shift."""
        if profiles not in ("exact", "tractor"):
            raise JointphotError(f"TractorEngine: profiles must be 'exact' or 'tractor', got {profiles!r}")
        if subpixel_shift not in ("fourier", "lanczos"):
            raise JointphotError(f"TractorEngine: subpixel_shift must be 'fourier' or 'lanczos', "
                                 f"got {subpixel_shift!r}")
        self.profiles = profiles
        self.subpixel_shift = subpixel_shift
        ok, info = tractor_available()
        if not ok:
            raise JointphotError(f"the Tractor engine is not available: the Tractor is not importable "
                                 f"here ({info}); use --engine native or --engine auto")
        self._version = info
        self._T = _import()
        self._psf_cache: Dict[int, Tuple[PSF, object]] = {}
        if check_derivatives:
            ok, msg = galaxy_derivative_check(self)
            if not ok:
                raise JointphotError(
                    f"the installed Tractor ({info}) has the galaxy-derivative bug of 2026 "
                    f"(NullWCS + PixPos galaxy position derivatives wrong: {msg}); install the "
                    f"Tractor {PINNED_TRACTOR}")

    @property
    def version(self) -> str:
        v = self._version
        return f"tractor {v if v.startswith('dr') or not v[:1].isdigit() else 'dr' + v}"

    # --- building Tractor objects ---------------------------------------------------------
    def tractor_psf(self, psf: PSF):
        """The Tractor PSF object for `psf` (cached per PSF object)."""
        key = id(psf)
        hit = self._psf_cache.get(key)
        if hit is not None and hit[0] is psf:
            return hit[1]
        T = self._T
        if psf.kind == "fwhm" and psf.sigma_pix is not None:
            tpsf = T.NCircularGaussianPSF([math.sqrt(psf.sigma_pix ** 2 + 1.0 / 12.0)], [float(psf.image.sum())])
        else:
            img = np.asarray(psf.image, dtype=float)
            if img.ndim != 2 or img.shape[0] % 2 == 0 or img.shape[1] % 2 == 0:
                raise JointphotError(f"PSF image must be 2-d with odd sides, got shape {img.shape}")
            img = np.where(np.isfinite(img), img, 0.0)     # its sum is the PSF's light fraction
            # Hybrid: galaxy mixture components too wide for the FFT box (they would wrap
            # around) are drawn as Gaussians convolved with a Gaussian of the PSF's second
            # moments, as the native engine does.
            pix = T.FourierShiftPixelizedPSF(img) if self.subpixel_shift == "fourier" else T.PixelizedPSF(img)
            tpsf = T.HybridPixelizedPSF(pix, gauss=_moment_gaussian(T, img))
        if len(self._psf_cache) > 16:
            self._psf_cache.clear()
        self._psf_cache[key] = (psf, tpsf)
        return tpsf

    def _image(self, data, invvar, psf):
        T = self._T
        img = T.Image(data=np.asarray(data, dtype=np.float32),
                      invvar=np.asarray(invvar, dtype=np.float32),
                      psf=self.tractor_psf(psf), wcs=T.NullWCS(pixscale=1.0),
                      photocal=T.NullPhotoCal(), sky=T.ConstantSky(0.0))
        img.freezeAllParams()
        return img

    def tractor_source(self, s: Source, shape: Sequence[int], psf: PSF, pos_bound: Optional[float] = None,
                       re_max: float = np.inf):
        """The Tractor source for `s` on an image of `shape`.

        pos_bound [px]: for fitting, bounds the position to +- pos_bound and r_e to RE_RANGE
        and below `re_max` [px].
        None (rendering, forced photometry): no bounds, because the Tractor clamps a
        parameter into its bounds when they are set -- an LR-frame galaxy smaller than
        RE_RANGE[0] LR px would be drawn too large (fluxes up to 4 % high).
        """
        T = self._T
        if s.kind not in KINDS:
            raise JointphotError(f"unknown source kind {s.kind!r} (expected one of {KINDS})")
        pos = T.PixPos(float(s.x), float(s.y))
        if pos_bound is not None:
            pos.lowers = [s.x - pos_bound, s.y - pos_bound]
            pos.uppers = [s.x + pos_bound, s.y + pos_bound]
        flux = T.Flux(float(s.flux))
        if s.kind == "point":
            return T.PointSource(pos, flux)
        re_hi = min(RE_RANGE[1], re_max)
        re = float(np.clip(s.re, RE_RANGE[0], re_hi)) if pos_bound is not None else s.re
        shp = T.EllipseESoft(*shape_to_esoft(re, 1.0 if s.kind == "rex" else s.ab, s.phi))
        if pos_bound is not None:
            shp.lowers = [math.log(RE_RANGE[0]), None, None]
            shp.uppers = [math.log(re_hi), None, None]
        if s.kind == "rex":
            shp.freezeParams("ee1", "ee2")
        exact = self.profiles == "exact"
        if s.kind == "comp":
            fracdev, ln_ratio = T.FracDev(float(np.clip(s.fracdev, *FRACDEV_RANGE))), T.ScalarParam(math.log(s.re_ratio))
            ln_ratio.stepsize = 0.01
            if pos_bound is not None:
                (fracdev.lower, fracdev.upper), (ln_ratio.lower, ln_ratio.upper) = FRACDEV_RANGE, LN_RE_RATIO_RANGE
                ln_ratio.setValue(float(np.clip(ln_ratio.getValue(), *LN_RE_RATIO_RANGE)))
            src = (T.ExactCompGalaxy if exact else T.CompGalaxy)(pos, flux, shp, fracdev, ln_ratio)
        elif s.kind in ("exp", "rex"):
            src = (T.ExactExpGalaxy if exact else T.ExpGalaxy)(pos, flux, shp)
        elif s.kind == "dev":
            src = (T.ExactDevGalaxy if exact else T.DevGalaxy)(pos, flux, shp)
        else:
            n = T.SersicIndex(float(np.clip(s.n, *SERSIC_N_RANGE)))
            n.lower, n.upper = SERSIC_N_RANGE
            n.maxstep = SERSIC_N_MAXSTEP
            src = (T.ExactSersicGalaxy if exact else T.SersicGalaxy)(pos, flux, shp, n)
        self._set_halfsize(src, shape, psf)
        return src

    def _set_halfsize(self, src, shape, psf):
        # The Tractor truncates galaxy patches at nre * r_e (4 for exp); use PATCH_NRE.
        re = src.shape.re
        T = self._T
        n = (src.sersicindex.getValue() if isinstance(src, T.SersicGalaxy)
             else FIXED_SERSIC_N["dev"] if isinstance(src, T.DevGalaxy) else FIXED_SERSIC_N["exp"])
        psf_r = max(psf.image.shape) / 2.0 if psf.image is not None else 10.0
        if self.profiles == "exact":   # the native engine's stamp
            from jointphot import models
            half = models.PSFRenderer(psf).stamp_half_size(Source("sersic", 0.0, 0.0, 1.0, re, 1.0, 0.0, n))
        else:
            half = patch_nre(n) * re + psf_r + 1
        src.halfsize = int(min(max(shape) + 1, math.ceil(half)))

    def _to_source(self, tsrc, kind: str) -> Source:
        x, y = tsrc.pos.x, tsrc.pos.y
        flux = float(tsrc.brightness.getValue())
        if kind == "point":
            return Source(kind, float(x), float(y), flux)
        re, ab, phi = esoft_to_shape(*tsrc.shape.getAllParams())
        if kind == "comp":
            return Source(kind, float(x), float(y), flux, re=re, ab=max(ab, AB_RANGE[0]), phi=phi,
                          fracdev=float(tsrc.fracDev.getValue()), re_ratio=math.exp(float(tsrc.lnRatio.getValue())))
        n = float(tsrc.sersicindex.getValue()) if kind == "sersic" else FIXED_SERSIC_N[kind]
        if kind == "rex":
            return Source(kind, float(x), float(y), flux, re=re, n=n)
        return Source(kind, float(x), float(y), flux, re=re, ab=max(ab, AB_RANGE[0]), phi=phi, n=n)

    def shift_context(self):
        """Context in which the Tractor renders galaxies with this engine's sub-pixel shift."""
        return _galaxy_fourier_shift() if self.subpixel_shift == "fourier" else contextlib.nullcontext()

    # --- Engine interface --------------------------------------------------------------------
    @_with_shift_context
    def render(self, shape: Sequence[int], psf: PSF, sources: Sequence[Source]) -> np.ndarray:
        T = self._T
        shape = tuple(int(v) for v in shape)
        img = self._image(np.zeros(shape), np.ones(shape), psf)
        srcs = [self.tractor_source(s, shape, psf) for s in sources]
        tr = T.Tractor([img], srcs)
        return np.asarray(tr.getModelImage(0, sky=False), dtype=float)

    @_with_shift_context
    def fit_group(self, image, invvar, psf, sources, *, max_iter=15, dlnp_tol=1e-3, pos_bound=1.0,
                  re_max=None) -> GroupFit:
        T = self._T
        image = np.asarray(image, dtype=float)
        invvar = np.asarray(invvar, dtype=float)
        shape = image.shape
        img = self._image(image, invvar, psf)
        kinds = [s.kind for s in sources]
        re_max = [np.inf] * len(sources) if re_max is None else list(re_max)
        srcs = [self.tractor_source(s, shape, psf, pos_bound=pos_bound, re_max=r) for s, r in zip(sources, re_max)]
        tr = T.Tractor([img], srcs, optimizer=T.ConstrainedOptimizer())
        tr.freezeParam("images")
        converged = False
        n_iter = 0
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for _ in range(max_iter):
                dlnp, _x, _alpha = tr.optimize(shared_params=False)
                n_iter += 1
                if not np.isfinite(dlnp) or dlnp < dlnp_tol:
                    converged = bool(np.isfinite(dlnp) or dlnp == 0)
                    break
            model = np.asarray(tr.getModelImage(0, sky=False), dtype=float)
            cov, names, derivs = self._full_covariance(tr, shape, invvar, _at_limits(tr))
        good = invvar > 0
        chi2 = float(np.sum(invvar[good] * (image[good] - model[good]) ** 2))
        nfree = len(names)
        out_sources: List[Source] = []
        errors: List[Dict[str, float]] = []
        at_bound: List[bool] = []
        covariances: List[np.ndarray] = []
        flux_weights: List[np.ndarray] = []
        w = np.where(good, invvar, 0.0)
        k = 0
        for src, kind, re_hi in zip(srcs, kinds, re_max):
            npar = src.numberOfParams()
            sl = slice(k, k + npar)
            flux_weights.append(w * np.asarray(derivs @ cov[:, k + 2]).reshape(shape))
            k += npar
            c = cov[sl, sl]
            err = {"x": c[0, 0], "y": c[1, 1], "flux": c[2, 2]}
            to_std = np.eye(npar)              # Tractor parameters -> base.STANDARD_PARAMS
            if kind not in ("point", "rex"):   # rex: ln re is the Tractor's logre, ee1/ee2 frozen
                to_std[3:6, 3:6] = _standard_jacobian(src.shape.getAllParams())
            covariances.append(to_std @ c @ to_std.T)
            ns = self._to_source(src, kind)
            bound = False
            if kind == "rex":
                err["re"] = ns.re ** 2 * c[3, 3]
                bound |= ns.re <= RE_RANGE[0] * (1 + 1e-3) or ns.re >= min(RE_RANGE[1], re_hi) * (1 - 1e-3)
            elif kind != "point":
                J = _shape_jacobian(src.shape.getAllParams())
                cs = J @ c[3:6, 3:6] @ J.T
                err.update(re=cs[0, 0], ab=cs[1, 1], phi=cs[2, 2])
                if kind == "sersic":
                    err["n"] = c[6, 6]
                    n = ns.n
                    bound |= (n <= SERSIC_N_RANGE[0] + 1e-3) or (n >= SERSIC_N_RANGE[1] - 1e-3)
                if kind == "comp":
                    err["fracdev"] = c[6, 6]
                    ln_ratio = math.log(ns.re_ratio)
                    bound |= not (FRACDEV_RANGE[0] + 1e-3 < ns.fracdev < FRACDEV_RANGE[1] - 1e-3)
                    bound |= not (LN_RE_RATIO_RANGE[0] + 1e-3 < ln_ratio < LN_RE_RATIO_RANGE[1] - 1e-3)
                raw_ab = esoft_to_shape(*src.shape.getAllParams())[1]
                bound |= raw_ab <= AB_RANGE[0] * (1 + 1e-6)
                bound |= ns.re <= RE_RANGE[0] * (1 + 1e-3) or ns.re >= min(RE_RANGE[1], re_hi) * (1 - 1e-3)
            errors.append({key: float(np.sqrt(v)) if np.isfinite(v) and v >= 0 else float("nan")
                           for key, v in err.items()})
            out_sources.append(ns)
            at_bound.append(bool(bound))
        return GroupFit(sources=out_sources, errors=errors, n_iter=n_iter, converged=converged,
                        chi2=chi2, ndof=int(good.sum()) - nfree, at_bound=at_bound, covariances=covariances,
                        flux_weights=flux_weights)

    def _derivative_matrix(self, tr, shape):
        """Sparse (npix, nparam) matrix of the Tractor's model derivatives (CSC), and names.

        Sparse because an LR tile has hundreds of sources, each touching a small patch."""
        from scipy import sparse
        derivs = tr.getDerivs()
        names = tr.getParamNames()
        ny, nx = shape
        rows, cols, vals = [], [], []
        for j, dlist in enumerate(derivs):
            for patch, _img in dlist:
                if patch is None or patch.patch is None:
                    continue
                arr = np.asarray(patch.patch, dtype=float)
                x0, y0 = int(patch.x0), int(patch.y0)
                ya, yb = max(y0, 0), min(y0 + arr.shape[0], ny)
                xa, xb = max(x0, 0), min(x0 + arr.shape[1], nx)
                if ya >= yb or xa >= xb:
                    continue
                sub = arr[ya - y0:yb - y0, xa - x0:xb - x0]
                yy, xx = np.mgrid[ya:yb, xa:xb]
                nz = sub != 0
                rows.append((yy * nx + xx)[nz])
                cols.append(np.full(int(nz.sum()), j))
                vals.append(sub[nz])
        if rows:
            rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        A = sparse.csc_matrix((vals, (rows, cols)), shape=(ny * nx, len(derivs)))
        A.sum_duplicates()
        return A, names

    def _full_covariance(self, tr, shape, invvar, held=None):
        """Covariance of the Tractor's thawed parameters (those `held` at a bound get zero rows and
        columns: held fixed, not marginalised, the native engine's active set), their names and the
        derivative matrix (_derivative_matrix; positions stepped by COVARIANCE_POS_STEP)."""
        steps = [(src.pos, list(src.pos.getStepSizes())) for src in tr.catalog]
        for pos, old in steps:
            pos.setStepSizes([COVARIANCE_POS_STEP] * len(old))
        try:
            A, names = self._derivative_matrix(tr, shape)
        finally:
            for pos, old in steps:
                pos.setStepSizes(old)
        w = np.where(invvar > 0, invvar, 0.0).ravel()
        F = (A.T @ _weighted(A, w)).toarray()
        free = np.ones(len(names), bool) if held is None else ~np.asarray(held, bool)
        cov = np.zeros_like(F)
        cov[np.ix_(free, free)] = _invert(F[np.ix_(free, free)])
        return cov, names, A

    @_with_shift_context
    def solve_fluxes(self, image, invvar, psf, sources) -> FluxFit:
        T = self._T
        image = np.asarray(image, dtype=float)
        invvar = np.asarray(invvar, dtype=float)
        shape = image.shape
        n = len(sources)
        flux = np.full(n, np.nan)
        cov = np.full((n, n), np.nan)
        masked_fraction = np.ones(n)
        if n == 0:
            return FluxFit(flux, cov, 0.0, int((invvar > 0).sum()), np.zeros(0, bool), masked_fraction)
        img = self._image(image, invvar, psf)
        srcs = [self.tractor_source(s.copy(flux=1.0), shape, psf) for s in sources]
        tr = T.Tractor([img], srcs)
        tr.freezeParam("images")
        for src in srcs:
            src.freezeAllBut("brightness")
        with np.errstate(all="ignore"):
            A, _names = self._derivative_matrix(tr, shape)   # unit-flux models, one column per source
        w = invvar.ravel()
        good = w > 0
        wg = np.where(good, w, 0.0)
        # Unit-flux models: the part on pixels with invvar > 0; the rest (masked or off the
        # image) is the masked fraction, as in the native engine.
        on_good = np.asarray(A.T @ good.astype(float)).ravel()
        masked_fraction = 1.0 - on_good
        valid = on_good > MIN_MODEL_ON_DATA
        idx = np.flatnonzero(valid)
        b = image.ravel()
        if idx.size:
            Ai = A[:, idx]
            F = (Ai.T @ _weighted(Ai, wg)).toarray()
            C = _invert(F)
            f = C @ np.asarray(Ai.T @ (wg * b)).ravel()
            flux[idx] = f
            cov[np.ix_(idx, idx)] = C
        valid &= np.isfinite(flux)
        model = np.asarray(A @ np.where(np.isfinite(flux), flux, 0.0)).ravel()
        chi2 = float(np.sum(wg[good] * (b[good] - model[good]) ** 2))
        return FluxFit(flux=flux, covariance=cov, chi2=chi2, ndof=int(good.sum()) - int(idx.size),
                       valid=valid, masked_fraction=np.clip(masked_fraction, 0.0, 1.0))


def _weighted(A, w: np.ndarray):
    """diag(w) A for a sparse A."""
    from scipy import sparse
    return (sparse.diags(w) @ A).tocsc()


def _moment_gaussian(T, img: np.ndarray):
    """GaussianMixturePSF with the light and second moments of the PSF image (one component)."""
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    pos = np.clip(img, 0, None)
    w = pos.sum()
    cx, cy = nx // 2, ny // 2
    cxx = ((xx - cx) ** 2 * pos).sum() / w
    cyy = ((yy - cy) ** 2 * pos).sum() / w
    cxy = ((xx - cx) * (yy - cy) * pos).sum() / w
    return T.GaussianMixturePSF(np.array([img.sum()]), np.zeros((1, 2)), np.array([[[cxx, cxy], [cxy, cyy]]]))


def _at_limits(tr) -> np.ndarray:
    """True for each thawed shape parameter of Tractor `tr` (r_e, n: priors) that sits on its lower or
    upper bound; positions are never held (their bound only guards the optimiser)."""
    params = np.asarray(tr.getParams(), float)
    names = tr.getParamNames()
    held = np.zeros(params.size, bool)
    for i, (name, value, lo, hi) in enumerate(zip(names, params, tr.getLowerBounds(), tr.getUpperBounds())):
        if name.split(".")[-2:-1] == ["pos"]:      # e.g. catalog.source0.pos.x
            continue
        tol = 1e-9 * max(1.0, abs(value))
        held[i] = (lo is not None and value <= lo + tol) or (hi is not None and value >= hi - tol)
    for i, name in enumerate(names):               # a comp at fracDev 0 or 1 no longer depends on lnRatio
        if name.endswith(".fracDev") and held[i] and i + 1 < len(names) and names[i + 1].endswith(".lnRatio"):
            held[i + 1] = True
    return held


def _invert(F: np.ndarray) -> np.ndarray:
    """Inverse of a Fisher matrix; pseudo-inverse (and NaN for empty rows) when singular."""
    n = F.shape[0]
    if n == 0:
        return F.copy()
    d = np.sqrt(np.clip(np.diag(F), 0, None))
    empty = d == 0
    s = np.where(empty, 1.0, d)
    Fn = F / s[:, None] / s[None, :]
    try:
        Cn = np.linalg.inv(Fn)
        if not np.all(np.isfinite(Cn)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        Cn = np.linalg.pinv(Fn, rcond=1e-12)
    C = Cn / s[:, None] / s[None, :]
    C[empty, :] = np.nan
    C[:, empty] = np.nan
    return C


def galaxy_derivative_check(engine: TractorEngine, tol: float = 0.2) -> Tuple[bool, str]:
    """Compare the Tractor's galaxy x-derivative with a finite difference of its own model.

    The 2026 bug makes it 3600x too large with NullWCS + PixPos; a healthy Tractor agrees to
    a few per cent.  Returns (ok, message).
    """
    T = engine._T
    shape = (41, 41)
    psf = PSF(image=_gauss_image(1.5, 15), kind="fwhm", sigma_pix=1.5)
    s = Source("exp", 20.3, 19.8, 100.0, re=3.0, ab=0.6, phi=30.0)
    img = engine._image(np.zeros(shape), np.ones(shape), psf)
    src = engine.tractor_source(s, shape, psf)
    tr = T.Tractor([img], [src])
    tr.freezeParam("images")
    src.freezeAllBut("pos")
    with engine.shift_context():
        A = engine._derivative_matrix(tr, shape)[0].toarray()
    h = 0.05
    m1 = engine.render(shape, psf, [s.copy(x=s.x + h)])
    m0 = engine.render(shape, psf, [s.copy(x=s.x - h)])
    fd = ((m1 - m0) / (2 * h)).ravel()
    ratio = float(np.dot(A[:, 0], fd) / np.dot(fd, fd))
    return abs(ratio - 1.0) < tol, f"d(model)/dx from the Tractor / finite difference = {ratio:.4g}"


def _gauss_image(sigma: float, half: int) -> np.ndarray:
    """Pixel-integrated unit-sum Gaussian on a (2 half + 1)^2 grid."""
    from scipy.special import erf
    edges = np.arange(-half - 0.5, half + 1.0)
    c = 0.5 * (1 + erf(edges / (sigma * math.sqrt(2))))
    p = np.diff(c)
    img = np.outer(p, p)
    return img / img.sum()

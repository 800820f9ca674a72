"""The engine interface: what a fitting engine (native, Tractor) must provide.

Engines work on one image array in its own pixel frame.  Everything astronomical
(WCS, zeropoints, astrometric offsets, catalogues) stays outside, in fit_hr / fit_lr.

Pixel conventions: 0-based, (0, 0) is the centre of the first pixel, x = column, y = row.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Dict, List, Optional, Sequence

import numpy as np

#: Model kinds every engine must support (the Legacy Surveys' model types): 'point'; 'rex', a
#: round exponential (ab = 1 fixed, r_e free); 'exp' and 'dev', Sersic with n fixed at 1 and 4;
#: 'sersic' with n free; 'comp', a bulge + disc: an exponential disc (re, ab, phi) plus a de
#: Vaucouleurs bulge on the same ellipse holding the fraction `fracdev` of the flux, its half-light
#: radius `re_ratio` x re (DR7's COMP with the two shapes tied to one ellipse and a radius ratio).
#: Every galaxy profile is truncated as models.sersic_profile says.
KINDS = ("point", "rex", "exp", "dev", "sersic", "comp")
#: Engine-independent parameter vector of a source: pixel position, flux [counts], ln re [ln pix],
#: ellipticity e = (1 - ab) / (1 + ab) as (e1, e2) = e (cos 2 phi, sin 2 phi), and n (a comp: its
#: first six, then fracdev and ln re_ratio; to_standard).
STANDARD_PARAMS = ("x", "y", "flux", "lnre", "e1", "e2", "n")
#: Number of STANDARD_PARAMS (the first ones) each kind fits.
N_PARAMS = {"point": 3, "rex": 4, "exp": 6, "dev": 6, "sersic": 7, "comp": 8}
#: Catalogue `type` code of each kind, and back.
TYPE_OF_KIND = {"point": "psf", "rex": "rex", "sersic": "ser", "exp": "exp", "dev": "dev", "comp": "comp"}
KIND_OF_TYPE = {v: k for k, v in TYPE_OF_KIND.items()}
#: Fixed Sersic index of each galaxy kind (None = fitted).
FIXED_SERSIC_N = {"rex": 1.0, "exp": 1.0, "dev": 4.0, "sersic": None}
#: Range of a comp's bulge flux fraction fracdev, and of ln re_ratio (bulge r_e / disc r_e, 0.03-1).
FRACDEV_RANGE = (0.0, 1.0)
LN_RE_RATIO_RANGE = (float(np.log(0.03)), 0.0)
#: A comp's bulge and disc each take their own LR flux unless its fracdev is within this of 0 or 1 (fit_lr).
SPLIT_FRACDEV_MARGIN = 0.02
#: Smallest and largest galaxy half-light radius [px] an engine may return.
RE_RANGE = (0.2, 300.0)
#: Range of the Sersic index an engine may return (inside the Tractor's mixture table, 0.29-6.3).
SERSIC_N_RANGE = (0.5, 6.0)
#: Smallest and largest axis ratio b/a.
AB_RANGE = (0.05, 1.0)
#: A source needs at least this fraction of its unit-flux model on pixels with invvar > 0 to
#: get a flux in solve_fluxes: a band whose image edge, chip gap or mask leaves less of a source
#: gives it NaN (flag LR_OFF_IMAGE), not a number made from its far wings (on a simulated band
#: those ran from -5e4 to 7e3 counts for sources whose centres were off the image).
MIN_MODEL_ON_DATA = 0.1
#: A comp (bulge + disc) source's bulge flux fraction and bulge r_e / disc r_e where a fit starts.
COMP_START_FRACDEV = 0.3
COMP_START_RE_RATIO = 0.3


@dataclasses.dataclass
class Source:
    """One model source in the pixel frame of the image being fitted.

    flux: total flux in image counts.  re: half-light radius of the major axis (pixels).
    ab: axis ratio b/a.  phi: major-axis angle in degrees, counter-clockwise from +x towards +y.
    n: Sersic index (ignored for 'point'; 1 for 'exp', 4 for 'dev').
    fracdev, re_ratio: a comp's bulge flux fraction and bulge r_e / disc r_e (ignored otherwise).
    """

    kind: str
    x: float
    y: float
    flux: float
    re: float = 0.0
    ab: float = 1.0
    phi: float = 0.0
    n: float = 1.0
    fracdev: float = COMP_START_FRACDEV
    re_ratio: float = COMP_START_RE_RATIO

    def copy(self, **changes) -> "Source":
        return dataclasses.replace(self, **changes)

    @property
    def is_galaxy(self) -> bool:
        return self.kind != "point"


def to_standard(src: Source) -> np.ndarray:
    """The first N_PARAMS[kind] STANDARD_PARAMS of a source (3 for point, 4 for rex, 6 for
    exp/dev, 7 for sersic)."""
    e = (1 - src.ab) / (1 + src.ab)
    vals = [src.x, src.y, src.flux, np.log(max(src.re, 1e-3)), e * np.cos(np.radians(2 * src.phi)),
            e * np.sin(np.radians(2 * src.phi)), src.n]
    if src.kind == "comp":
        vals = vals[:6] + [src.fracdev, np.log(src.re_ratio)]
    return np.array(vals[:N_PARAMS[src.kind]], float)


def from_standard(template: Source, v: np.ndarray) -> Source:
    """A source of the kind of `template` from a STANDARD_PARAMS vector."""
    if template.kind == "point":
        return template.copy(x=v[0], y=v[1], flux=v[2])
    if template.kind == "rex":
        return template.copy(x=v[0], y=v[1], flux=v[2], re=float(np.exp(v[3])), ab=1.0, phi=0.0)
    e = np.hypot(v[4], v[5])
    ab = (1 - e) / (1 + e)
    phi = 0.5 * np.degrees(np.arctan2(v[5], v[4]))
    out = template.copy(x=v[0], y=v[1], flux=v[2], re=float(np.exp(v[3])), ab=float(ab), phi=float(phi))
    if template.kind == "sersic":
        out.n = float(v[6])
    if template.kind == "comp":
        out.fracdev, out.re_ratio = float(v[6]), float(np.exp(v[7]))
    return out


@dataclasses.dataclass
class PSF:
    """A PSF on the image's pixel grid.

    image: square odd-sized array whose sum is the PSF's light fraction (1 unless the job sets
    `*_psf_light_fraction`), centre at the middle pixel, pixel-convolved (an
    "effective" PSF: a point source of flux F centred on pixel (i, j) gives F * image).
    kind: 'fits', 'fwhm' or 'psfex' (where it came from; engines may use a native class).
    sigma_pix: Gaussian sigma in pixels when kind == 'fwhm'.
    """

    image: np.ndarray
    kind: str = "fits"
    sigma_pix: Optional[float] = None

    @functools.cached_property
    def fwhm_pix(self) -> float:
        """FWHM [px]: 2.3548 sigma for Gaussians; otherwise the diameter of the circle whose
        area is that of the image above half its peak, on an 8x cubic-spline upsampling.
        (A second-moment width would be ~60 % too large for a Moffat beta = 3 seeing PSF.)"""
        if self.sigma_pix is not None:
            return 2.3548 * self.sigma_pix
        from scipy import ndimage
        up = 8                      # samples per pixel side, each standing for 1/up^2 px^2
        ny, nx = self.image.shape
        yy, xx = np.meshgrid(np.arange(ny * up), np.arange(nx * up), indexing="ij")
        fine = ndimage.map_coordinates(np.asarray(self.image, dtype=float),
                                       [(yy + 0.5) / up - 0.5, (xx + 0.5) / up - 0.5], order=3, mode="nearest")
        area = np.count_nonzero(fine >= 0.5 * fine.max()) / up ** 2
        return 2.0 * float(np.sqrt(area / np.pi))


@dataclasses.dataclass
class GroupFit:
    """Result of a non-linear fit of a group of sources (HR)."""

    sources: List[Source]
    errors: List[Dict[str, float]]   # per source: 1-sigma errors of the free parameters (same units)
    n_iter: int                      # optimiser steps taken
    converged: bool                  # dlnp < tol reached before max_iter
    chi2: float                      # sum of invvar * residual^2 over pixels with invvar > 0
    ndof: int                        # pixels with invvar > 0 minus free parameters
    at_bound: List[bool]             # per source: a shape parameter ended on its bound
    #: per source: covariance of its parameters in STANDARD_PARAMS order (only the ones its kind
    #: has: 3 for point, 6 for exp/dev, 7 for sersic); None when the engine does not provide it.
    covariances: Optional[List[np.ndarray]] = None
    #: per source: the pixel weights w [1/counts x counts] of its fitted flux on the fit's image
    #: (image-shaped; the fit linearised at its optimum: delta flux = sum(w x delta image), i.e. invvar x
    #: the Jacobian x the covariance's flux column, every other parameter of the group marginalised);
    #: noise.variance_factor of these is the flux variance's factor under correlated noise.  None when
    #: the engine does not provide them.
    flux_weights: Optional[List[np.ndarray]] = None


@dataclasses.dataclass
class FluxFit:
    """Result of a linear flux-only fit (LR): everything but the fluxes is frozen."""

    flux: np.ndarray          # (n,) counts
    covariance: np.ndarray    # (n, n) counts^2, full covariance of the fluxes
    chi2: float
    ndof: int
    valid: np.ndarray         # (n,) bool: the source had pixels with invvar > 0 and a finite flux
    masked_fraction: np.ndarray  # (n,) fraction of the unit-flux model that fell on invvar == 0 pixels

    @property
    def flux_err(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0, None))


class FluxDesign:
    """Forced photometry of fixed `sources` on the pixels of one image (its inverse variance and PSF):
    solve(image) is Engine.solve_fluxes on `image`, model(fluxes) the model image [counts] of the sources with
    those fluxes.  An engine may compute once what does not depend on the image (Engine.flux_design)."""

    def __init__(self, engine: "Engine", invvar: np.ndarray, psf: PSF, sources: Sequence[Source]):
        self.engine, self.invvar, self.psf, self.sources = engine, invvar, psf, list(sources)

    def solve(self, image: np.ndarray) -> FluxFit:
        return self.engine.solve_fluxes(image, self.invvar, self.psf, self.sources)

    def model(self, fluxes: Sequence[float]) -> np.ndarray:
        return self.engine.render(self.invvar.shape, self.psf, [s.copy(flux=f) for s, f in zip(self.sources, fluxes)])


class Engine(abc.ABC):
    """A fitting engine.  Implementations: engines.native.NativeEngine, engines.tractor_engine."""

    name: str = "abstract"

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """Version string recorded in output headers."""

    @abc.abstractmethod
    def render(self, shape: Sequence[int], psf: PSF, sources: Sequence[Source]) -> np.ndarray:
        """Model image (counts per pixel) of `sources` convolved with `psf` on an array of `shape`."""

    @abc.abstractmethod
    def fit_group(self, image: np.ndarray, invvar: np.ndarray, psf: PSF, sources: Sequence[Source], *,
                  max_iter: int = 15, dlnp_tol: float = 1e-3, pos_bound: float = 1.0,
                  re_max: Optional[Sequence[float]] = None) -> GroupFit:
        """Fit position, flux and (for galaxies) shape of all `sources` together.

        Stops after `max_iter` optimiser steps or when an accepted step improves the
        log-likelihood by less than `dlnp_tol` (the original tool's rule).  Positions stay
        within `pos_bound` pixels of their start; galaxy r_e within RE_RANGE and below the
        source's `re_max` [px] (one per source; None = RE_RANGE only).  Reaching a bound sets
        at_bound.  Errors come from the full covariance of all free parameters of the group
        (not its diagonal).
        """

    @abc.abstractmethod
    def solve_fluxes(self, image: np.ndarray, invvar: np.ndarray, psf: PSF,
                     sources: Sequence[Source]) -> FluxFit:
        """Solve jointly for the fluxes of `sources`, all other parameters frozen."""

    def flux_design(self, invvar: np.ndarray, psf: PSF, sources: Sequence[Source]) -> FluxDesign:
        """solve_fluxes and render for several images with the same invvar, psf and sources."""
        return FluxDesign(self, invvar, psf, sources)

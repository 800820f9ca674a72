"""Model choice by the fit, as the Legacy Surveys pipeline does it (legacypipe
``oneblob._select_model``, DR9/DR10 rules).

Each candidate model of a source (its neighbours' models subtracted) is fitted on the
source's box; its ``dchisq`` is the chi^2 improvement over no source (chi^2 of the box
without the source minus chi^2 with the fitted model; larger is better).  The rules:

1. Detection: the best candidate must have dchisq - nparams >= 25 (5 sigma in
   parameter-penalised units), else the simplest model ('point') is kept
   (legacypipe drops such sources; jointphot keeps every SExtractor detection).
2. PSF or REX: REX when its penalised dchisq is higher and it improves on PSF by more than
   1 % of dchisq(PSF).
3. EXP or DEV replace it when they improve on it by more than GALAXY_MARGIN, and on PSF
   by more than 1 % of dchisq(PSF); the better of the two.  (legacypipe asks the 1 % of
   the step from REX too; at HST resolution that keeps well-resolved bright galaxies as
   REX with fluxes 10-20 % low, so jointphot asks it only of the step away from PSF, which
   is what keeps bright stars with imperfect PSF models point sources.)
4. SER replaces EXP/DEV when it improves on them by more than SERSIC_MARGIN.

Galaxy candidates (EXP, DEV, SER) are fitted only when REX beats PSF by more than one
(REX's one extra parameter) or the source is bright (dchisq > BRIGHT_DCHISQ): faint sources
get the simple models, so their fluxes are not drowned in shape degeneracy.

`fit_candidates` runs this ladder for one source on its box; hr_models 'legacy' uses it for every HR
source, and the LR residual pass (lr_residual) for every LR-only source.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from .engines.base import FIXED_SERSIC_N, GroupFit, Source

#: Candidate kinds in the order of the catalogue's `dchisq` column (the Legacy Surveys'
#: DCHISQ order: PSF, REX, DEV, EXP, SER).
DCHISQ_ORDER = ("point", "rex", "dev", "exp", "sersic")
#: Parameters of each model besides its flux (legacypipe's nparams).
NPARAMS = {"point": 2, "rex": 3, "exp": 5, "dev": 5, "sersic": 6}
#: Penalised dchisq a source needs to count as detected.
DETECTION_CUT = 25.0
#: dchisq by which EXP/DEV must beat PSF/REX (3 sigma plus the extra parameters).
GALAXY_MARGIN = 9.0 + NPARAMS["exp"] - NPARAMS["point"]
#: dchisq by which SER must beat EXP/DEV.
SERSIC_MARGIN = 25.0
#: hr_models 'sersic': chi^2 improvement needed to prefer a Sersic galaxy over a point source (4 more parameters).
GALAXY_DCHI2 = 12.0
#: hr_models 'sersic': chi^2 improvement needed to prefer a bulge + disc (comp) over a Sersic galaxy.  The two
#: extrapolate a galaxy's faint wings differently: a comp fitted to a truncated Sersic of n ~ 3 misses 4-6 % of
#: its light, a Sersic fitted to a bulge + disc adds 5-35 % (n 2.5-6).  At 2 (Akaike) 9 % of single-Sersic
#: galaxies at HR S/N 50-200 became comps (chi robust sigma 1.19); at 8 (Bayesian, ~3000 pixels) 3 %.
COMP_DCHI2 = 8.0
#: Fraction of dchisq(PSF) by which REX must beat PSF, and galaxies PSF/REX.
FRACTIONAL_MARGIN = 0.01
#: Above this dchisq the galaxy candidates are tried even when REX does not beat PSF.
BRIGHT_DCHISQ = 400.0
#: The rules in one line, for the catalogue README.
SELECTION_SUMMARY = (f"rex over psf if better after a 1-parameter penalty and by > {FRACTIONAL_MARGIN:.0%} of "
                     f"dchisq(psf); exp/dev if better by > {GALAXY_MARGIN:g} (and than psf by > {FRACTIONAL_MARGIN:.0%} of "
                     f"dchisq(psf)); ser over exp/dev if better by > {SERSIC_MARGIN:g}; "
                     f"below a penalised dchisq of {DETECTION_CUT:g}: psf")


def galaxies_worth_trying(dchisq: Dict[str, float]) -> bool:
    """Whether to fit EXP, DEV and SER after PSF and REX (legacypipe's 'gals' marker)."""
    psf, rex = dchisq.get("point", 0.0), dchisq.get("rex", 0.0)
    return rex > psf + 1.0 or max(psf, rex) > BRIGHT_DCHISQ


def select_model(dchisq: Dict[str, float]) -> str:
    """The kind chosen from the dchisq of the candidates that were fitted (missing = not tried)."""
    penalised = [d - NPARAMS[k] for k, d in dchisq.items() if np.isfinite(d)]
    if not penalised or max(penalised) < DETECTION_CUT:
        return "point"
    psf = dchisq.get("point", 0.0)
    keep = "point"
    if "rex" in dchisq and dchisq["rex"] - NPARAMS["rex"] > psf - NPARAMS["point"]:
        if not (psf > 0 and dchisq["rex"] - psf < FRACTIONAL_MARGIN * psf):
            keep = "rex"
    if not ("exp" in dchisq or "dev" in dchisq):
        return keep
    cut = max(GALAXY_MARGIN, FRACTIONAL_MARGIN * psf) if keep == "point" else GALAXY_MARGIN
    exp_gain = dchisq.get("exp", -np.inf) - dchisq.get(keep, 0.0)
    dev_gain = dchisq.get("dev", -np.inf) - dchisq.get(keep, 0.0)
    if exp_gain >= max(cut, dev_gain):
        keep = "exp"
    elif dev_gain > max(cut, exp_gain):
        keep = "dev"
    if keep in ("exp", "dev") and dchisq.get("sersic", -np.inf) - dchisq[keep] >= SERSIC_MARGIN:
        keep = "sersic"
    return keep


def dchisq_vector(dchisq: Dict[str, float]) -> np.ndarray:
    """The catalogue's `dchisq` (5,) in DCHISQ_ORDER; NaN for candidates not fitted."""
    return np.array([dchisq.get(k, np.nan) for k in DCHISQ_ORDER], float)


def model_choice_variance(dchisq: Dict[str, float], fluxes: Dict[str, float], chosen: str) -> float:
    """Variance [flux^2] of a source's flux over its candidate models about the chosen model's
    flux, each candidate weighted by its Akaike weight exp(-AIC / 2), AIC = chi^2 + 2 (NPARAMS + 1)
    (chi^2 = -dchisq up to a constant).  Added to the flux error: at low S/N, where exp, dev and
    ser fit almost equally well but give fluxes 5-20 % apart, the chosen model's own covariance
    would understate the uncertainty."""
    kinds = [k for k in dchisq if np.isfinite(dchisq[k]) and np.isfinite(fluxes.get(k, np.nan))]
    if chosen not in kinds:
        return 0.0
    aic = np.array([-dchisq[k] + 2.0 * (NPARAMS[k] + 1) for k in kinds])
    w = np.exp(-0.5 * (aic - aic.min()))
    f = np.array([fluxes[k] for k in kinds])
    return float(np.sum(w * (f - fluxes[chosen]) ** 2) / np.sum(w))


def fit_candidates(fit: Callable[[Source], GroupFit], current: Source, start: Source, chi2_none: float,
                   noise_factor: Callable[[GroupFit], float]) -> Tuple[str, Dict[str, GroupFit], Dict[str, float]]:
    """The candidate ladder of one source on its box (its neighbours already subtracted): PSF and REX
    from `current`'s position and flux (REX from its r_e if it is a galaxy, else `start`'s); when
    galaxies_worth_trying, DEV and EXP from the REX fit with `start`'s ellipse; SER from the better of the
    two when select_model takes one of them.  fit(source) is the GroupFit of that one source on the box,
    chi2_none the box's chi^2 without the source, noise_factor(the PSF candidate's GroupFit) the noise's
    variance factor, by which chi^2 differences are divided (correlated noise inflates them).  A candidate
    whose shape ends on a bound is not chosen.  Returns (chosen kind, {kind: GroupFit}, {kind: dchisq})."""
    x, y, flux = current.x, current.y, current.flux
    fits = {"point": fit(Source("point", x, y, flux)),
            "rex": fit(Source("rex", x, y, flux, re=current.re if current.is_galaxy else start.re))}
    factor = noise_factor(fits["point"])

    def gains():
        return {k: (chi2_none - f.chi2) / factor for k, f in fits.items()}

    dchisq = gains()
    if galaxies_worth_trying(dchisq):
        r = fits["rex"].sources[0]
        for kind in ("dev", "exp"):
            fits[kind] = fit(start.copy(kind=kind, x=r.x, y=r.y, flux=r.flux, re=r.re, n=FIXED_SERSIC_N[kind]))
        dchisq = gains()
        best = select_model(_within_bounds(dchisq, fits))
        if best in ("exp", "dev"):
            fits["sersic"] = fit(fits[best].sources[0].copy(kind="sersic", n=FIXED_SERSIC_N[best]))
            dchisq = gains()
    return select_model(_within_bounds(dchisq, fits)), fits, dchisq


def candidates_flux_variance(kind: str, fits: Dict[str, GroupFit], dchisq: Dict[str, float]) -> float:
    """model_choice_variance [flux^2] of fit_candidates' result, over the candidates whose shape ends on
    no bound (one held by its bound, e.g. an r_e stretched over a neighbour's light, is no model of the source)."""
    fluxes = {k: f.sources[0].flux for k, f in fits.items()}
    return model_choice_variance(_within_bounds(dchisq, fits), fluxes, kind)


def _within_bounds(dchisq, fits):
    """dchisq of the candidates whose fit ended with no shape parameter on its bound (a model held by its
    prior, e.g. an r_e stretched to its cap by a neighbour's halo, is not chosen)."""
    return {k: d for k, d in dchisq.items() if not fits[k].at_bound[0]}

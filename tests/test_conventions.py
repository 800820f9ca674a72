"""The numbers that matter: flux units, astrometric signs, mask bits, flags."""
import numpy as np
import pytest

from jointphot import conventions as cv


def test_magnitudes_and_microjansky():
    assert cv.counts_to_mag(1.0, 27.0) == pytest.approx(27.0)
    assert cv.counts_to_mag(100.0, 27.0) == pytest.approx(22.0)
    assert np.isnan(cv.counts_to_mag(-1.0, 27.0))
    assert cv.mag_error(100.0, 10.0) == pytest.approx(0.108574, rel=1e-5)
    # zp 23.9 means counts are uJy; zp 31.4 means nJy
    assert cv.counts_to_ujy_factor(23.9) == pytest.approx(1.0)
    assert cv.counts_to_ujy_factor(31.4) == pytest.approx(1e-3)
    assert cv.flux_scale(25.0, 27.5) == pytest.approx(10.0)


def test_astrometric_offsets_are_image_minus_reference_on_sky():
    ra, dec = 150.0, 60.0
    # an image whose positions are +36 mas east (on sky) and -3.6 mas south of the reference
    ra_img, dec_img = cv.reference_to_image(ra, dec, (36.0, -3.6))
    assert (ra_img - ra) * np.cos(np.radians(dec)) * 3.6e6 == pytest.approx(36.0, rel=1e-6)
    assert (dec_img - dec) * 3.6e6 == pytest.approx(-3.6, rel=1e-6)
    back = cv.image_to_reference(ra_img, dec_img, (36.0, -3.6))
    assert back[0] == pytest.approx(ra, abs=1e-10) and back[1] == pytest.approx(dec, abs=1e-12)


def test_mask_bits():
    bits, from_header = cv.mask_bits_from_header({"MP_BAD": 0, "MP_SAT": 1, "MP_NO_DATA": 8, "OTHER": 3})
    assert from_header and bits == {"BAD": 0, "SAT": 1, "NO_DATA": 8}
    assert cv.mask_value(["BAD", "NO_DATA"], bits) == 257
    defaults, from_header = cv.mask_bits_from_header({})
    assert not from_header and defaults["EDGE"] == 4 and defaults["CR"] == 3
    with pytest.raises(KeyError):
        cv.mask_value(["NOPE"], bits)


def test_flags_are_distinct_bits_with_meanings():
    values = list(cv.FLAGS.values())
    assert len(set(values)) == len(values) and all(v & (v - 1) == 0 for v in values)
    assert set(cv.FLAG_MEANINGS) == set(cv.FLAGS)
    assert cv.describe_flags(cv.FLAGS["SPURIOUS"] | cv.FLAGS["LR_BLENDED"]) == ["SPURIOUS", "LR_BLENDED"]


def test_flagged_means_a_flag_other_than_the_informational_ones():
    """One definition of "flagged" for the QA pictures, the summary and the reports."""
    flags = [0, cv.FLAGS["HR_EDGE"], cv.FLAGS["LR_BLENDED"] | cv.FLAGS["HR_RESIDUAL_DETECTION"],
             cv.FLAGS["PARAM_AT_BOUND"], cv.FLAGS["HR_EDGE"] | cv.FLAGS["HR_NOT_CONVERGED"]]
    assert cv.is_flagged(flags).tolist() == [False, False, False, True, True]
    assert cv.MEASUREMENT_FLAG_BITS | sum(cv.FLAGS[n] for n in cv.INFORMATIONAL_FLAGS) == sum(cv.FLAGS.values())

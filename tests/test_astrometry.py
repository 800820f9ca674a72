"""Astrometric offset files: format, median, errors, and the sign convention round trip."""
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
import astropy.units as u

from jointphot import conventions
from jointphot.astrometry import read_offsets
from jointphot.errors import JointphotError


def write(tmp_path, text, name="astro.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_median_of_rows_header_skipped(tmp_path):
    # the header line holds numbers too: it must still be skipped
    path = write(tmp_path, "1000 1000\n10 -5\n14 -9 17.2 extra\n\n# a comment\n12.5 -8 19.0\n")
    assert read_offsets(path, "hr") == (12.5, -8.0)


def test_single_row(tmp_path):
    assert read_offsets(write(tmp_path, "dRA dDec\n-45.0 30.0\n"), "lr") == (-45.0, 30.0)


def test_nan_rows_are_ignored_by_the_median(tmp_path):
    path = write(tmp_path, "dRA dDec\n1 nan\n3 2\nnan 4\n5 6\n")
    assert read_offsets(path, "lr") == (3.0, 4.0)


def test_even_number_of_rows_gives_the_mean_of_the_middle_two(tmp_path):
    assert read_offsets(write(tmp_path, "h\n1 10\n2 20\n4 40\n100 400\n"), "hr") == (3.0, 30.0)


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(JointphotError, match="hr_astrometry_correction_name .*nofile.txt.*does not exist"):
        read_offsets(str(tmp_path / "nofile.txt"), "hr")
    with pytest.raises(JointphotError, match="lr_astrometry_correction_name .*empty.txt.*no offset rows"):
        read_offsets(write(tmp_path, "dRA dDec\n\n# nothing\n", "empty.txt"), "lr")
    with pytest.raises(JointphotError, match="^lr_astrometry_correction_name .*blank.txt: no offset rows"):
        read_offsets(write(tmp_path, "", "blank.txt"), "lr_astrometry_correction_name")
    with pytest.raises(JointphotError, match="text.txt: line 3: non-numeric"):
        read_offsets(write(tmp_path, "h\n1 2\n3 abc\n", "text.txt"), "hr")
    with pytest.raises(JointphotError, match="short.txt: line 2: expected dRA dDec"):
        read_offsets(write(tmp_path, "h\n12.0\n", "short.txt"), "hr")
    with pytest.raises(JointphotError, match="allnan.txt.*every dDec value is NaN"):
        read_offsets(write(tmp_path, "h\n1 nan\n2 nan\n", "allnan.txt"), "hr")
    with pytest.raises(JointphotError, match="inf.txt.*infinite"):
        read_offsets(write(tmp_path, "h\n1 inf\n", "inf.txt"), "hr")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"h\n\xff\xfe\x00\x01\n")
    with pytest.raises(JointphotError, match="bin.txt.*cannot read"):
        read_offsets(str(binary), "hr")


@pytest.mark.parametrize("dec0", [2.2, 60.0, -75.0])
def test_round_trip_with_conventions(tmp_path, dec0):
    """Offsets read from a file move reference positions onto the image and back, on-sky in mas."""
    path = write(tmp_path, "dRA_mas dDec_mas\n-40 25\n-45 30\n-50 35\n")
    offset = read_offsets(path, "lr")
    assert offset == (-45.0, 30.0)
    rng = np.random.default_rng(2)
    ra = 150.1 + rng.uniform(-0.01, 0.01, 20)
    dec = dec0 + rng.uniform(-0.01, 0.01, 20)
    ra_img, dec_img = conventions.reference_to_image(ra, dec, offset)
    back_ra, back_dec = conventions.image_to_reference(ra_img, dec_img, offset)
    # exact up to the cos(dec) of image vs reference dec: ~1e-7 of the offset, < 1 micro-arcsec
    np.testing.assert_allclose(back_ra, ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(back_dec, dec, rtol=0, atol=1e-12)
    # image - reference, on the sky: dRA already includes cos(dec)
    ref = SkyCoord(ra * u.deg, dec * u.deg)
    img = SkyCoord(ra_img * u.deg, dec_img * u.deg)
    dra, ddec = ref.spherical_offsets_to(img)
    np.testing.assert_allclose(dra.to_value(u.mas), offset[0], atol=1e-3)
    np.testing.assert_allclose(ddec.to_value(u.mas), offset[1], atol=1e-3)

"""Astrometric offset files of the original tool.

Format: the first line is a header and is skipped; every further line that is not blank and
does not start with '#' holds at least two whitespace-separated numbers, dRA and dDec in
milliarcseconds, in the sense image minus reference (dRA is on-sky, i.e. includes cos dec;
see :mod:`jointphot.conventions`).  Extra columns are ignored.  The offset of the image is
the NaN-aware median over the rows.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import JointphotError


def read_offsets(path, what):
    """Median (dRA, dDec) in mas (image - reference) from an offset file.

    what: 'hr' or 'lr' (or the job key itself, e.g. 'lr_astrometry_correction_name'), used in messages.
    """
    key = what if what.endswith("_astrometry_correction_name") else f"{what}_astrometry_correction_name"
    label = f"{key} {path}"
    if not os.path.isfile(path):
        raise JointphotError(f"{label}: file does not exist")
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise JointphotError(f"{label}: cannot read the file: {exc}") from None
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) < 2:
            raise JointphotError(f"{label}: line {number}: expected dRA dDec (mas), got {text!r}")
        try:
            rows.append((float(fields[0]), float(fields[1])))
        except ValueError:
            raise JointphotError(f"{label}: line {number}: non-numeric offset in {text!r}") from None
    if not rows:
        raise JointphotError(f"{label}: no offset rows after the header line")
    values = np.array(rows)
    if np.isinf(values).any():
        raise JointphotError(f"{label}: infinite offset value")
    result = []
    for column, name in ((values[:, 0], "dRA"), (values[:, 1], "dDec")):
        if np.isnan(column).all():
            raise JointphotError(f"{label}: every {name} value is NaN")
        result.append(float(np.nanmedian(column)))
    return result[0], result[1]

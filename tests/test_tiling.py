"""The tile grid covers the image, each pixel is owned once, ids are row-major; one --tiles grammar."""
import json
import subprocess
import sys

import numpy as np
import pytest

from jointphot.errors import JointphotError
from jointphot.plan import parse_tiles
from jointphot.tiling import make_grid


@pytest.mark.parametrize("shape,size,overlap", [((2000, 2000), (30, 30), (6, 6)), ((1000, 2500), (20, 25), (4, 2)),
                                                ((700, 333), (60, 60), (10, 10))])
def test_every_pixel_owned_once_and_padding(shape, size, overlap):
    tiles = make_grid(shape, 0.03, size, overlap)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny:7, 0:nx:7]
    owners = np.zeros(xx.shape, int)
    for t in tiles:
        owners += t.owns(xx, yy)
        x0, x1, y0, y1 = t.padded
        assert 0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny
        # the padded region contains the core (inside the image)
        assert x0 <= max(t.core[0], -0.5) + 0.5 and x1 >= min(t.core[1], nx - 0.5) - 0.5
    assert (owners == 1).all()
    assert [t.tile_id for t in tiles] == list(range(len(tiles)))
    nxt = max(t.ix for t in tiles) + 1
    assert all(t.tile_id == t.iy * nxt + t.ix for t in tiles)


def test_grid_of_the_original_readme_example():
    # 3'x3' at 0.03"/px with 60" tiles -> 9 tiles, tile 0 at pixel (0, 0), 10" overlap = 5" each side
    tiles = make_grid((6000, 6000), 0.03, (60, 60), (10, 10))
    assert len(tiles) == 9
    assert tiles[0].owns(0, 0) and tiles[2].owns(5999, 0) and tiles[8].owns(5999, 5999)
    x0, x1, y0, y1 = tiles[4].padded
    assert (x1 - x0) * 0.03 == pytest.approx(70.0, abs=0.06)


@pytest.mark.parametrize("spec, ids", [("all", list(range(8))), ("3", [3]), ("0,2,5", [0, 2, 5]),
                                       ("0,2,5-7", [0, 2, 5, 6, 7]), (" 5-7 , 0 ", [0, 5, 6, 7]), ("1-1", [1])])
def test_tile_lists_have_the_pipelines_grammar(spec, ids):
    """`jointphot run --tiles` and the pipeline's --tiles (`jointphot select-tiles` in its PLAN task) read ids
    and ranges with this one parser; errors do not name the option, which the CLI adds once."""
    assert parse_tiles(spec, 8) == ids


def test_the_pipelines_tile_selection_is_this_grammar(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tiles": [{"tile_id": i} for i in range(8)]}))
    cli = [sys.executable, "-m", "jointphot.cli", "select-tiles", str(plan), "-o", str(tmp_path / "tiles.json")]
    ok = subprocess.run(cli + ["--tiles", "0,2,5-7"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "tiles.json").read_text()) == [0, 2, 5, 6, 7]
    (tmp_path / "tiles.json").unlink()
    bad = subprocess.run(cli + ["--tiles", "5-3"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "jointphot: error: --tiles: '5-3': the range '5-3' is empty"
    assert not (tmp_path / "tiles.json").exists()


@pytest.mark.parametrize("spec, words", [("one", ["'one'", "ranges"]), ("5-3", ["range '5-3' is empty"]),
                                         ("0,9", ["tile 9 does not exist"])])
def test_bad_tile_lists_are_named(spec, words):
    with pytest.raises(JointphotError) as err:
        parse_tiles(spec, 8)
    assert all(w in str(err.value) for w in words) and "--tiles" not in str(err.value)

"""compare.py plumbing that runs in seconds (the full comparison is a measurement, run by hand)."""
import numpy as np
import pytest

from clipstudio.diffusion import compare as C
from clipstudio.errors import ClipstudioError


def test_contact_sheet_layout(tmp_path):
    from PIL import Image
    rows = [[np.full((32, 32, 3), 10 * i, np.uint8), np.full((64, 64, 3), 200, np.uint8)] for i in range(3)]
    path = tmp_path / "sheet.png"
    C.contact_sheet(rows, ["a", "b", "c"], C.METHODS, str(path), cell=50)
    im = Image.open(path)
    assert im.size == (330 + 2 * 50, 20 + 3 * 50)
    assert im.getpixel((330 + 50 + 25, 20 + 25)) == (200, 200, 200)
    assert im.getpixel((330 + 25, 20 + 2 * 50 + 25)) == (20, 20, 20)


def test_bad_input(tmp_path):
    with pytest.raises(ClipstudioError, match="unknown method"):
        C.compare(["a red circle on a blue background"], [0], str(tmp_path), methods=["dalle"])
    with pytest.raises(ClipstudioError, match="at least one prompt"):
        C.compare([], [0], str(tmp_path))
    with pytest.raises(ClipstudioError, match="positive"):
        C.main(["-o", str(tmp_path), "--seeds", "0"])

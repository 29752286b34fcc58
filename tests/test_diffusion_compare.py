"""compare.py plumbing that runs in seconds (the full comparison is a measurement, run by hand)."""
import numpy as np
import pytest

from clipstudio.worlds.shapes import compare as C
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
    with pytest.raises(ClipstudioError, match="unknown generator 'dalle'"):
        C.main(["-o", str(tmp_path), "--generator", "dalle"])
    with pytest.raises(ClipstudioError, match="unknown method"):
        C.clip_generator("cfg-diffusion:pixels")


def test_methods_name_their_generator():
    assert C.clip_generator("clip-guided") is None and C.clip_generator("cfg-diffusion") is None
    assert C.clip_generator("clip-guided:pixels") == "pixels"


def test_compare_end_to_end_writes_report_and_sheet(tmp_path):
    """One prompt, one seed, two CLIP-guided generators and the CFG backend (in this process: spawning one per
    method, as the CLI does to measure each one's peak memory, costs seconds of imports each)."""
    pytest.importorskip("diffusers")
    from PIL import Image
    from clipstudio.worlds.shapes.diffusion_model import DEFAULT_CHECKPOINT
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no shipped shapes-diffusion checkpoint")
    methods = ["clip-guided:pixels", "clip-guided:primitives", "cfg-diffusion"]
    opts = {"clip_options": {"steps": 1, "search": 0, "layout": "none", "cutn": 4}, "steps": 2}
    res = C.compare(["a red circle on a blue background"], [0], str(tmp_path), methods=methods, options=opts,
                    isolated=False)
    assert list(res) == methods
    for r in res.values():
        assert 0 <= r["check_pass_rate"] <= 1 and r["n"] == 1 and r["seconds_per_image"] > 0 and r["peak_rss_mb"] > 50
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {m} |" in report for m in methods)
    assert Image.open(tmp_path / "sheet.png").size == (330 + 96 * 3, 20 + 96)

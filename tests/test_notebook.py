"""notebooks/quickstart.ipynb runs top to bottom offline on the CPU (nbclient) and shows images inline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import REPO_DIR, SHARED_DIR

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra (nbclient)")
pytest.importorskip("ipykernel", reason="the notebook test needs the test extra (ipykernel)")

NOTEBOOK = REPO_DIR / "notebooks" / "quickstart.ipynb"
CI_PARAMETERS = {"DEVICE": '"cpu"'}  # the parameters cell already holds CI's small sizes; only pin the device
CELL_TIMEOUT_S = 300


def _inject(nb, values: dict[str, str]) -> None:
    """Append assignments to the one cell tagged ``parameters`` (what papermill does, without papermill)."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    cells[0].source += "\n" + "\n".join(f"{name} = {value}" for name, value in values.items())


def _image_outputs(nb) -> int:
    """Outputs carrying a PNG (displays, display updates and GIFs count once per output)."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if "image/png" in out.get("data", {}) or "image/gif" in out.get("data", {}))


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert "colab.research.google.com" in nb.cells[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit the notebook without outputs"


@pytest.mark.slow  # about 3 minutes of CPU; CI runs it after the fast suite (README's test command)
def test_quickstart_runs_offline_on_cpu(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _inject(nb, CI_PARAMETERS)
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])))
    weights = SHARED_DIR / "weights" / "taef2"
    if weights.is_dir():
        monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(weights))
    else:
        monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails
    assert _image_outputs(nb) >= 3, "at least three cells should show images inline"
    assert (tmp_path / "zoom.gif").is_file() and (tmp_path / "compare-report" / "report.md").is_file()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "online: False" in text, "the offline run must skip the cells that need downloads"
    assert ("latent: skipped" in text) != weights.is_dir()

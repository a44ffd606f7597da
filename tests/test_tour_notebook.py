"""docs/tour.ipynb runs: executed with nbclient on tiny synthetic data, as a reader would run it.

The notebook's first code cell (tagged ``parameters``) holds its sizes; the test replaces
that cell with small ones and executes every cell in a fresh kernel, so an API change that
breaks the tour fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tour test needs nbformat, nbclient and ipykernel (the test extra)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("optuna", reason="the tour runs the recipe")

TOUR = Path(__file__).resolve().parents[1] / "docs" / "tour.ipynb"

SMALL = '''
DATA = "synthetic:classes=3,n=90,size=12,channels=1"
EPOCHS = 2
TRAIN_SUBSET = None
BATCH_SIZE = 16
LAB_SUBSET = None
LAB_EPOCHS = 1
RECIPE = {"budget_seconds": None, "coarse_trials": 2, "refine_trials": 1, "coarse_epochs": 1, "refine_epochs": 1,
          "final_epochs": 1, "max_rounds": 1, "search_subset": None, "sampler": "random", "pruner": "none"}
'''


def _parameters_cell(nb) -> int:  # noqa: ANN001 - a NotebookNode
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "docs/tour.ipynb needs exactly one cell tagged 'parameters'"
    return tagged[0]


@pytest.mark.slow
def test_the_tour_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel inherits it: the tour's temporary folder lands here
    nb = nbformat.read(TOUR, as_version=4)
    nb.cells[_parameters_cell(nb)].source = SMALL
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    for expected in ("the tour writes into", "test accuracy", "ECE", "target layer", "total:"):
        assert expected in text, expected
    assert list(cwd.iterdir()) == [], "the tour wrote into the folder it ran in"
    assert [p.name for p in tmp.iterdir() if p.name.startswith("cnnlab-tour-")], "the tour's folder is a temporary one"


def test_the_committed_tour_has_no_outputs_or_private_paths() -> None:
    """The committed notebook is the source: outputs would be stale and carry this machine's paths."""
    nb = nbformat.read(TOUR, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None

"""The notebooks as committed: thin, parameterised, and without outputs (nbval runs them separately)."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with_output = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not with_output, f"{path.name}: code cells {with_output} carry outputs; clear them before committing."
    assert any("parameters" in c["metadata"].get("tags", []) for c in code), f"{path.name}: no 'parameters' cell"


def test_there_is_one_notebook_per_stage():
    # 01-06: the pipeline (lib.stages.ORDER); 07: the mixing experiments over finished runs (lib/mixing.py)
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]

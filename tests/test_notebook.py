"""examples/quickstart.ipynb runs top to bottom in a fresh kernel of this interpreter."""

import os
import sys

import pytest

from test_data import needs_fashion_mnist

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart.ipynb")


def _outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@needs_fashion_mnist
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata.kernelspec.name == "python3"
    # One extra cell (in memory only): which interpreter did the kernel run on?
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    workdir, scratch = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel inherits it: its tempfile goes here
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    kernel_python = _outputs_text(notebook.cells[-1]).strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable), (
        f"the notebook ran on {kernel_python}, not this venv's {sys.executable}: a 'python3' "
        "kernelspec elsewhere on JUPYTER_PATH shadows the venv's ipykernel")
    text = "\n".join(_outputs_text(c) for c in notebook.cells if c.cell_type == "code")
    assert "γ = 0:" in text and "params" in text and "parity max rel" in text
    assert not list(workdir.iterdir()), "the notebook wrote into its working directory"
    assert list(scratch.glob("quickstart_*/small.tflite")), "the notebook's .tflite is missing"

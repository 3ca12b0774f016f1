"""Execute a notebook headless on given runs, as a reader would (used by each experiment's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute_notebook(name: str, env: dict[str, str], tmp_path: Path, timeout: int = 300) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` top to bottom with ``env`` set; assert it drew a figure.

    Args:
        name: Notebook file name under ``notebooks/``.
        env: Environment variables the notebook reads (e.g. ``RUNS_DIR``), set for its kernel.
        tmp_path: A scratch folder for the kernel spec.
        timeout: Seconds allowed per cell.

    Returns:
        The executed notebook.
    """
    path = ROOT / "notebooks" / name
    # A kernel spec for this interpreter, found before any the user installed.
    write_kernel_spec(tmp_path / "kernels" / "python3")
    saved = {k: os.environ.get(k) for k in [*env, "JUPYTER_PATH"]}
    os.environ.update({**env, "JUPYTER_PATH": str(tmp_path)})
    try:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
    return nb

"""Keep the repository's notebooks clean when JupyterLab saves them.

Running a notebook in JupyterLab autosaves its outputs into the file, so the tracked
``notebooks/*.ipynb`` would change under ``git status`` after every session. The repository's
``jupyter_server_config.py`` (``jupyter lab --config=jupyter_server_config.py``) installs
:func:`strip_tracked_outputs` as the server's pre-save hook: a notebook saved inside the checkout's
``notebooks/`` folder is written without outputs and execution counts (the open tab keeps them),
and any other notebook (a copy, papermill's output, a notebook of your own) is saved as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TRACKED_NOTEBOOKS", "strip_outputs", "strip_tracked_outputs"]

#: the folder whose notebooks the repository tracks
TRACKED_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def strip_outputs(notebook: dict[str, Any]) -> dict[str, Any]:
    """``notebook`` (nbformat 4 JSON) with every code cell's outputs and execution count cleared."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return notebook


def strip_tracked_outputs(model: dict[str, Any], path: str, contents_manager: Any, **kwargs: Any) -> None:
    """Jupyter Server pre-save hook: strip a notebook saved into the tracked ``notebooks/``."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    root = Path(getattr(contents_manager, "root_dir", ".")).resolve()
    if (root / path.lstrip("/")).resolve().parent == TRACKED_NOTEBOOKS:
        strip_outputs(model["content"])

"""Where relative paths point: the current directory on a command line, the notebook's project in
a notebook.

A relative path typed on a command line (``--output-dir s1``, ``--dataset dq``, ``sweep run
f.yaml``) means the current directory, as in every Unix tool. A notebook's kernel starts in the
notebook's own folder (JupyterLab: ``notebooks/``; papermill: wherever it is told), so a notebook
default such as ``runs/pretrain-resnet-tiny`` would otherwise name a different folder from each
place. :func:`project_root`, the folder every relative path resolves against, is therefore:

1. ``$WORKBENCH_ROOT`` when set (the one setting that overrides everything; a sweep sets it for
   its points' kernels to the folder it was started from);
2. in a notebook kernel: the notebook's project, the nearest folder at or above the kernel's
   directory holding a ``pyproject.toml``, else the kernel's directory;
3. everywhere else (command lines, scripts, tests): the current directory.

Nothing resolves against the installed package's checkout: the only path taken from it is
:func:`checkout_notebook` (the notebooks a sweep runs by default). Absolute paths are used as given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ROOT_ENV", "checkout_notebook", "in_notebook_kernel", "project_root", "resolve_path", "shown_path"]

ROOT_ENV = "WORKBENCH_ROOT"


def in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, papermill) rather than a command line."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "ipykernel" in sys.modules


def project_root() -> Path:
    """The folder relative paths resolve against (see the module docstring for the order)."""
    env = os.environ.get(ROOT_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise NotADirectoryError(f"{ROOT_ENV}={env!r} is not a directory; unset it or point it at the project")
        return root.resolve()
    cwd = Path.cwd().resolve()
    if in_notebook_kernel():
        for folder in (cwd, *cwd.parents):
            if (folder / "pyproject.toml").is_file():
                return folder
    return cwd


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as an absolute path: unchanged when absolute, else under :func:`project_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def checkout_notebook(name: str) -> Path:
    """``notebooks/<name>`` of the source checkout the package runs from (the sweeps' default notebook)."""
    return Path(__file__).resolve().parents[1] / "notebooks" / name


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a written report names it: relative to :func:`project_root` when inside it, so a
    committed README does not carry one machine's absolute paths; unchanged otherwise."""
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)

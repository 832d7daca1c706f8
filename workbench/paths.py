"""Where relative run and data paths point: the project root, not the kernel's directory.

JupyterLab starts a notebook's kernel in the notebook's own folder (``notebooks/``), papermill
in the caller's; ``runs/pretrain-resnet-tiny`` must name the same folder in both. Every
relative path a notebook or command line is given (run folders, datasets, checkpoints,
figure folders) is therefore resolved against :func:`project_root`:

1. ``$WORKBENCH_ROOT`` when set (the one setting that overrides everything);
2. else the nearest folder at or above the current directory holding a ``pyproject.toml``
   (a notebook in ``notebooks/`` finds the repository root);
3. else the source checkout the ``workbench`` package was installed from (an editable install
   run from any other directory);
4. else the current directory.

Absolute paths are used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT_ENV", "project_root", "resolve_path", "shown_path"]

ROOT_ENV = "WORKBENCH_ROOT"


def project_root() -> Path:
    """The folder relative paths resolve against (see the module docstring for the order)."""
    env = os.environ.get(ROOT_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise NotADirectoryError(f"{ROOT_ENV}={env!r} is not a directory; unset it or point it at the project")
        return root.resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return cwd


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as an absolute path: unchanged when absolute, else under :func:`project_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a written report names it: relative to :func:`project_root` when inside it, so a
    committed README does not carry one machine's absolute paths; unchanged otherwise."""
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)

"""Saving a tracked notebook from JupyterLab leaves the repository clean (issue 29): the server
config at the repository root installs a pre-save hook that strips outputs of notebooks/ only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from jupyter_server.services.contents.filemanager import FileContentsManager
from traitlets.config import Config, PyFileConfigLoader

from workbench import nbclean

ROOT = Path(__file__).resolve().parents[1]


def _executed(path: Path) -> dict:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
            cell["execution_count"] = 7
    return nb


def _config() -> Config:
    return PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT)).load_config()


def test_saving_a_tracked_notebook_from_the_server_keeps_git_clean(tmp_path, monkeypatch):
    """The real contents manager, configured by the repository's file, saves an executed 02 over
    the committed one (in a copy of the repository's notebooks, committed to a scratch git
    repository): git sees no change."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    tracked = repo / "notebooks" / "02_pretrain.ipynb"
    shutil.copy(ROOT / "notebooks" / "02_pretrain.ipynb", tracked)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")  # the repository's (Jupyter's checkpoint folders)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "notebooks"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    monkeypatch.setattr(nbclean, "TRACKED_NOTEBOOKS", (repo / "notebooks").resolve())
    manager = FileContentsManager(root_dir=str(repo), config=_config())
    assert manager.pre_save_hook is nbclean.strip_tracked_outputs
    manager.save({"type": "notebook", "format": "json", "content": _executed(tracked)}, "notebooks/02_pretrain.ipynb")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert status == "", status


def test_a_copy_or_an_outside_notebook_keeps_its_outputs(tmp_path):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "02_pretrain.ipynb", tmp_path / "notebooks" / "mine.ipynb")
    manager = FileContentsManager(root_dir=str(tmp_path), config=_config())
    manager.save({"type": "notebook", "format": "json", "content": _executed(tmp_path / "notebooks" / "mine.ipynb")},
                 "notebooks/mine.ipynb")
    saved = json.loads((tmp_path / "notebooks" / "mine.ipynb").read_text())
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] == 7 and c["outputs"] for c in code)

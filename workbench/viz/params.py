"""Validated notebook parameters for the viz notebooks (06 analysis, 07 checkpoint explorer).

papermill only warns about an unknown ``-p name value`` and runs with the defaults, so the
second cell of each notebook runs ``Params.from_params(**namespace_params(globals()))``
(``workbench.config``'s helpers): every primitive, non-IPython name must be a field of the
params dataclass, and each value is type-checked (papermill's ``-p`` turns ``007`` into 7) and
range-checked with a message that lists the valid choices.

``from_params`` also resolves relative paths against the project root
(:mod:`workbench.paths`), so ``runs/...`` names the same folder whether JupyterLab runs the
notebook from ``notebooks/`` or papermill from the repository root.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench import games
from workbench.paths import resolve_path
from workbench.settings import from_params as _from_params
from workbench.settings import namespace_params

__all__ = ["AnalysisParams", "ExplorerParams", "EXPLORER_SOURCES", "namespace_params"]

def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"invalid {name} {value!r}: valid choices are {', '.join(map(repr, valid))}")


#: Where the explorer's rollout comes from.
EXPLORER_SOURCES: tuple[str, ...] = ("checkpoint", "rollout", "synthetic")


@dataclass(frozen=True)
class ExplorerParams:
    """Parameters of ``notebooks/07_explore_checkpoint.ipynb``."""

    source: str = "checkpoint"
    """'checkpoint' plays the game with a checkpoint's model, 'rollout' loads a saved rollout,
    'synthetic' makes a random rollout without env or model (a smoke test of the widgets)."""
    checkpoint: str = "runs/pretrain-resnet-tiny"
    """Run dir, its checkpoints/ dir, or one checkpoint dir (source='checkpoint')."""
    rollout_path: str = ""
    """Directory of a saved rollout (source='rollout')."""
    game: str = "Pong"
    """Game to play (any spelling games.canonical_game accepts)."""
    seed: int = 0
    """Episode seed (env reset and the epsilon stream)."""
    max_steps: int = 300
    """Agent steps to play (the rollout keeps every frame in memory)."""
    epsilon: float = 0.001
    """Evaluation epsilon (papers: 0.001)."""
    planning_horizon: int = 2
    """JOWA checkpoints: beam-search horizon H (0 = greedy in Q, no tree)."""
    beam_width: int = 2
    """JOWA checkpoints: beam width K (1 = greedy in Q, no tree)."""
    video: bool = True
    """Render the rollout to an mp4 with score/action/Q overlay and show it inline."""
    out_dir: str = "runs/explore"
    """Where the rollout and the video are written."""

    def __post_init__(self) -> None:
        _choice("source", self.source, EXPLORER_SOURCES)
        if self.source == "checkpoint" and not self.checkpoint:
            raise ValueError("source='checkpoint' needs checkpoint=<run or checkpoint dir>")
        if self.source == "rollout" and not self.rollout_path:
            raise ValueError("source='rollout' needs rollout_path=<saved rollout dir>")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.planning_horizon < 0:
            raise ValueError(f"planning_horizon must be >= 0, got {self.planning_horizon}")
        if not 1 <= self.beam_width <= 18:
            raise ValueError(f"beam_width must be in [1, 18], got {self.beam_width}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

        games.canonical_game(self.game)  # raises with the valid names

    @classmethod
    def from_params(cls, **params: Any) -> ExplorerParams:
        """Validated parameters with ``checkpoint``, ``rollout_path`` and ``out_dir`` made absolute."""
        p = _from_params(cls, params)
        return replace(p, checkpoint=_absolute(p.checkpoint), rollout_path=_absolute(p.rollout_path),
                       out_dir=_absolute(p.out_dir))



@dataclass(frozen=True)
class AnalysisParams:
    """Parameters of ``notebooks/06_analysis.ipynb``."""

    run_dirs: str = "runs/*"
    """Comma-separated run directories or glob patterns (pass lists with papermill -y)."""
    out_dir: str = "runs/analysis"
    """Folder receiving the PNG + HTML figures and README.md: by default under ``runs/`` (ignored by
    git); the repository's tracked ``figures/`` is rewritten only when named (``-r out_dir figures``)."""
    include_paper_reference: bool = True
    """Draw the papers' reported numbers as reference points where available."""
    png: bool = True
    """Also write PNGs (needs Chromium; HTML is always written)."""
    reps: int = 2000
    """Bootstrap repetitions for the confidence intervals."""
    mix_protocols: bool = False
    """Compare runs evaluated under different protocols or step caps (left out otherwise)."""
    sweep: str = ""
    """A sweep file or folder (workbench.sweep): explore its finished points instead of run_dirs."""
    readme_notes: str = ""
    """A markdown file whose text opens the figures' README.md (a study's findings); '' for none."""

    def __post_init__(self) -> None:
        if self.readme_notes and not Path(resolve_path(self.readme_notes)).is_file():
            raise ValueError(f"readme_notes {self.readme_notes!r} is not a file (give a markdown file or '')")
        if not self.run_dirs.strip():
            raise ValueError("run_dirs is empty: give run directories or glob patterns, e.g. 'runs/*'")
        if self.reps < 100:
            raise ValueError(f"reps must be >= 100 for meaningful bootstrap CIs, got {self.reps}")
        if not self.out_dir.strip():
            raise ValueError("out_dir is empty")

    @property
    def run_dir_list(self) -> list[Path]:
        """``run_dirs`` expanded: globs resolved and sorted, only directories kept."""
        out: list[Path] = []
        for part in (p.strip() for p in self.run_dirs.split(",")):
            if not part:
                continue
            matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
            out.extend(Path(m) for m in matches if Path(m).is_dir())
        return list(dict.fromkeys(out))

    @classmethod
    def from_params(cls, **params: Any) -> AnalysisParams:
        """Validated parameters with every run-folder pattern and ``out_dir`` made absolute."""
        p = _from_params(cls, params)
        dirs = ",".join(_absolute(part.strip()) for part in p.run_dirs.split(",") if part.strip())
        return replace(p, run_dirs=dirs, out_dir=_absolute(p.out_dir), sweep=_absolute(p.sweep),
                       readme_notes=_absolute(p.readme_notes))


def _absolute(path: str) -> str:
    """'' stays '' (unset); anything else is resolved against the project root."""
    return str(resolve_path(path)) if path else ""



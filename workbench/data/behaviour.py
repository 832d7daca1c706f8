"""The behaviour policy's returns recorded next to a DQN-Replay root (``behaviour.json``).

A learning history recorded by the workbench (``workbench.study data``) writes, beside its
``{Game}/1/replay_logs``, the behaviour policy's mean return per split and game. The papers'
"behavior policy" line (Scaled QL Figure 2) is drawn from it; a real DQN-Replay root has no such
file, and then there is no line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["BEHAVIOUR_FILE", "behaviour_lines"]

BEHAVIOUR_FILE = "behaviour.json"


def behaviour_lines(dataset: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """``{split: {game: mean return}}`` from ``dataset``'s behaviour file; ``{}`` when it has none.

    Games without a return in a split (no complete episode there) are left out of that split."""
    path = Path(dataset) / BEHAVIOUR_FILE
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    if not isinstance(doc.get("behaviour"), dict):
        raise ValueError(f"{path} has no 'behaviour' mapping of split -> game -> return")
    return {split: {g: float(v) for g, v in per_game.items() if v is not None}
            for split, per_game in doc["behaviour"].items()}

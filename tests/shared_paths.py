"""Where the shared reference material lives: ``../shared`` beside the repository (CI clones it
there); ``WORKBENCH_SHARED`` overrides. Missing material fails the tests that need it, loudly."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DQN_FIXTURES = SHARED / "fixtures" / "dqn_replay"
REFERENCE_CSV = SHARED / "reference" / "atari_random_human.csv"

"""Research workbench for scaled offline RL on Atari (Scaled Q-learning and JOWA)."""

from workbench import threads

# Before any module of the package imports torch: its OpenMP runtime reads these at start.
threads.apply_environment()

__version__ = "0.1.0"

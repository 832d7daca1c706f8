"""Research workbench for scaled offline RL on Atari (Scaled Q-learning and JOWA)."""

__version__ = "0.1.0"

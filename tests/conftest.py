"""Test-wide settings: one torch thread per test process.

CI runs pytest with two xdist workers on two cores; more threads than cores makes torch's
thread pool spin and slows small models by an order of magnitude.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

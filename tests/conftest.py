"""Test-wide settings: one torch thread per test process; TensorBoard without TensorFlow.

CI runs pytest with two xdist workers on two cores; more threads than cores makes torch's
thread pool spin and slows small models by an order of magnitude.

TensorBoard's event reader (tests/test_tensorboard.py) imports TensorFlow when it is installed
(the rlu extra installs it), about 10 s in every worker; ``tensorboard.compat.notf`` is
TensorBoard's own switch to its TensorFlow stub (the module its TensorFlow-free build ships).
"""

import os
import sys
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def dopamine_store(tmp_path_factory):
    """One store of the Dopamine fixtures (Pong and Breakout, run 1, every checkpoint), built once
    per test process and shared read-only by the store, trainer and DDP tests."""
    from shared_paths import DQN_FIXTURES

    from workbench.data.build import build_store

    return build_store(DQN_FIXTURES, tmp_path_factory.mktemp("dopamine") / "store", ["Pong", "Breakout"], [1],
                       "near_optimal", progress=False)

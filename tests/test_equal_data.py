"""A split's size is the number of transitions every method trains on (issue 26, item 1).

The store is built from synthetic DQN-Replay files whose frames encode their source row, so the
rows a batch feeds the loss are read back from the pixels themselves: for Q-learning and BC the
newest frame of each state, for sequence methods every step the batch's mask marks real. The
expected set is computed from the source files (which chronological rows are starts), not from
the sampler.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch

from workbench.algos.base import StageContext, get_algo
from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import store as st
from workbench.data.sampler import SequenceSampler
from workbench.data.splits import StoreError, parse_split

GAME, ROWS, CKPTS = "Pong", 1500, 2
BUDGET = 240


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("equal_data")
    dr.write_synthetic_run(r / GAME / "1" / "replay_logs", CKPTS, ROWS, seed=5, num_actions=6, mean_episode=70)
    return r


def _store(root, tmp_path_factory, split):
    return bd.build_store(root, tmp_path_factory.mktemp("store") / "s", [GAME], [1], split, seed=2, progress=False)


def _split_ids(store) -> set[int]:
    """Source row ids (checkpoint * ROWS + slot) of the store's starts."""
    s = st.ReplayStore(store)
    src = s.source_of(GAME, np.asarray(s.game(GAME).starts))
    return {c * ROWS + slot for _, c, slot in src}


def _fed_ids(batch) -> set[int]:
    """Source rows a batch feeds the loss, read from the frames' pixels."""
    if "mask" in batch:  # sequence batch: every real step
        obs, mask = batch["obs"].numpy(), batch["mask"].numpy()
        return set(dr.frame_row_id(obs[mask]).tolist())
    return set(dr.frame_row_id(batch["obs"].numpy()[:, -1]).tolist())  # the state's newest frame


def _context(store, batch_size, tmp_path):
    return StageContext(store=store, games=(GAME,), batch_size=batch_size, games_per_batch=batch_size // 4, seed=0,
                        rank=0, world_size=1, run_dir=tmp_path, device=torch.device("cpu"), progress=False)


def _fed_by(method: str, store, tmp_path, batches: int) -> set[int]:
    spec = get_algo(method)
    settings = spec.settings_class()
    algo = spec.build(spec.default_model(), [GAME], settings, 0)
    stage = spec.stages(settings, spec.scale("cpu", spec.default_model()), 32, 0.0)[0].name
    fed: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-transition split's warning is tested on its own
        for batch in itertools.islice(spec.batches(algo, stage, _context(store, 32, tmp_path))(0), batches):
            fed |= _fed_ids(batch)
    return fed


@pytest.mark.parametrize("method", ["scaled_ql", "bc", "mgdt", "jowa"])
def test_every_method_trains_on_exactly_the_split(root, tmp_path_factory, tmp_path, method):
    """Drawing enough batches, each method's loss sees every transition of the split and no
    other: the count equals the split's size. (Before: sequence methods read every row a start's
    segment reaches, several times the split.)"""
    store = _store(root, tmp_path_factory, f"n:{BUDGET}:episodes")
    split = _split_ids(store)
    assert len(split) == BUDGET
    fed = _fed_by(method, store, tmp_path, batches=400)
    assert fed <= split, f"{method} fed {len(fed - split)} transitions outside the split"
    assert len(fed) == BUDGET


def test_sequence_segments_on_a_uniform_split_stay_inside_it(root, tmp_path_factory):
    """A split of single transitions: a segment stops at the first row that is not a sampled
    start, so a sequence sampler still feeds only the split (and says its segments are short)."""
    store = _store(root, tmp_path_factory, f"n:{BUDGET}")
    split = _split_ids(store)
    with pytest.warns(UserWarning, match="single transitions"):
        sampler = SequenceSampler(store, [GAME], 64, seq_len=8, seed=1, workers=1, prefetch=0)
    fed: set[int] = set()
    for i in range(300):
        fed |= _fed_ids(sampler.sample(i))
    assert fed <= split and len(fed) == BUDGET


def test_episode_split_is_whole_episodes_but_the_last(root, tmp_path_factory):
    """``n:N:episodes`` keeps whole episode pieces from the source (every start from the piece's
    first to its terminal or its checkpoint's last start), except one piece cut to fit."""
    store = _store(root, tmp_path_factory, f"n:{BUDGET}:episodes")
    chosen = _split_ids(store)
    # brute force from the source files: each checkpoint's starts, then its episode pieces
    pieces = []
    for c in range(CKPTS):
        meta = dr.load_checkpoint_meta(root / GAME / "1" / "replay_logs", c)
        valid = bd._valid_positions(meta, ROWS, 3)  # full rings of new rows, cursor 0
        term = meta.terminal[meta.time_order()]
        piece: list[int] = []
        for p in valid:
            if piece and (p != piece[-1] + 1 or term[piece[-1]]):
                pieces.append(piece)
                piece = []
            piece.append(c * ROWS + int(p))
        pieces.append(piece)
    whole = [p for p in pieces if set(p) <= chosen]
    partial = [p for p in pieces if set(p) & chosen and not set(p) <= chosen]
    assert len(partial) <= 1
    if partial:  # the cut piece keeps a prefix
        kept = sorted(set(partial[0]) & chosen)
        assert kept == partial[0][: len(kept)]
    assert sum(map(len, whole)) + sum(len(set(p) & chosen) for p in partial) == BUDGET
    assert len(whole) >= 2  # episodes of ~70 steps: a 240 budget takes several whole ones


def test_manifest_reports_available_and_trainable(root, tmp_path_factory):
    store = _store(root, tmp_path_factory, f"n:{BUDGET}:episodes")
    full = _store(root, tmp_path_factory, "all")
    info = json.loads((store / "manifest.json").read_text())["games_info"][GAME]
    full_info = json.loads((full / "manifest.json").read_text())["games_info"][GAME]
    assert info["transitions_trainable"] == BUDGET
    assert info["transitions_available"] == full_info["starts"] == full_info["transitions_trainable"]


def test_episode_unit_grammar():
    assert parse_split("n:5000:episodes").unit == "episodes"
    assert parse_split("fraction:0.1").unit == "transitions"
    assert parse_split("finetune_5k_expert").unit == "episodes"
    assert parse_split("jowa_10pct").unit == "episodes"
    for bad in ("all:episodes", "n:10:frames", "first:2:episodes"):
        with pytest.raises(StoreError, match="episodes"):
            parse_split(bad)

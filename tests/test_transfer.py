"""Partial checkpoint loading (workbench.transfer): what is copied, kept fresh, new, and refused.

Every expectation is stated against two independent builds: the source algo (whose checkpoint is
loaded) and a second fresh build with the destination's seed (what "kept at its initialization"
must equal), never against the loader's own output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench import checkpoint as ckpt_io
from workbench.algos.jowa import JOWA
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.run import Run
from workbench.transfer import TransferError, freeze, load_partial

SRC_GAMES = ["Pong", "Breakout"]


def _save_source(tmp_path: Path, algo, games, algo_name: str, model: str) -> Path:
    run = Run(tmp_path / "source")
    run.create("pretrain", {}, {"algo": algo_name, "model": model, "games": list(games)})
    ckpt_io.save_checkpoint(run.path, 10, algo.model, target=algo.target_model)
    return run.path


def _head_rows(model, game_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    sl = model.heads.head_slice(game_index)
    return model.heads.weight.detach()[sl], model.heads.bias.detach()[sl]


@pytest.fixture
def qsource(tmp_path):
    src = ScaledQL.build("resnet-tiny", SRC_GAMES, seed=1)
    return src, _save_source(tmp_path, src, SRC_GAMES, "scaled_ql", "resnet-tiny")


def test_scaled_ql_protocol_copies_encoder_and_old_heads_by_name(qsource):
    src, path = qsource
    games = ["Breakout", "Alien", "Pong"]  # another order than the source's: blocks match by name
    dst = ScaledQL.build("resnet-tiny", games, seed=2)
    fresh = ScaledQL.build("resnet-tiny", games, seed=2)
    report = load_partial(path, dst, games, transfer=("encoder", "heads"), reinitialize=("trunk",))

    s_state, d_state, f_state = src.model.state_dict(), dst.model.state_dict(), fresh.model.state_dict()
    enc = [k for k in d_state if k.startswith("encoder.")]
    trunk = [k for k in d_state if k.startswith("trunk.")]
    assert enc and trunk
    for k in enc:
        assert torch.equal(d_state[k], s_state[k]), k
    for k in trunk:
        assert torch.equal(d_state[k], f_state[k]), k
    assert any(not torch.equal(s_state[k], f_state[k]) for k in trunk)  # the two inits do differ
    for dst_i, game in enumerate(games):
        w, b = _head_rows(dst.model, dst_i)
        if game in SRC_GAMES:
            sw, sb = _head_rows(src.model, SRC_GAMES.index(game))
        else:
            sw, sb = _head_rows(fresh.model, dst_i)
        assert torch.equal(w, sw) and torch.equal(b, sb), game
    # The target network starts equal to the online network.
    for k, v in dst.target_model.state_dict().items():
        assert torch.equal(v, d_state[k]), k

    assert set(report.transferred) == set(enc) | {f"heads.{p}[{g}]" for p in ("weight", "bias") for g in SRC_GAMES}
    assert set(report.reinitialized) == set(trunk)
    assert set(report.new) == {"heads.weight[Alien]", "heads.bias[Alien]"}
    assert report.parts == {"encoder": "transferred", "trunk": "reinitialized", "heads": "transferred"}
    assert report.source_games == SRC_GAMES and report.games == games
    json.dumps(report.as_dict())  # recordable in config.json


def test_fresh_games_and_dropped_games(qsource):
    src, path = qsource
    dst = ScaledQL.build("resnet-tiny", ["Breakout"], seed=3)
    fresh = ScaledQL.build("resnet-tiny", ["Breakout"], seed=3)
    report = load_partial(path, dst, ["Breakout"], transfer=("encoder", "heads"), reinitialize=("trunk",),
                          fresh_games=["Breakout"])
    assert all(torch.equal(a, b) for a, b in zip(_head_rows(dst.model, 0), _head_rows(fresh.model, 0)))
    assert "heads.weight[Breakout]" in report.reinitialized
    assert "heads.weight[Pong]" in report.dropped and "heads.bias[Pong]" in report.dropped
    with pytest.raises(ValueError, match="fresh_games"):
        load_partial(path, dst, ["Breakout"], transfer=("encoder",), reinitialize=("trunk", "heads"),
                     fresh_games=["Alien"])


def _unchanged(algo, before):
    return all(torch.equal(v, before[k]) for k, v in algo.model.state_dict().items())


def test_refuses_shape_mismatches_before_writing(qsource):
    _, path = qsource
    # Another atom count: the per-game head blocks do not fit.
    dst = ScaledQL.build("resnet-tiny", ["Pong", "Alien"], ScaledQLConfig(num_atoms=21), seed=0)
    before = {k: v.clone() for k, v in dst.model.state_dict().items()}
    with pytest.raises(TransferError, match="heads.weight"):
        load_partial(path, dst, ["Pong", "Alien"], transfer=("encoder", "heads"), reinitialize=("trunk",))
    assert _unchanged(dst, before)  # the encoder (checked first, and fitting) was not written either
    # Another encoder: its tensors are missing from (or differ in shape in) the checkpoint.
    other = ScaledQL.build("impala-tiny", ["Pong"], seed=0)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(TransferError, match="encoder"):
        load_partial(path, other, ["Pong"], transfer=("encoder",), reinitialize=("trunk", "heads"))
    assert _unchanged(other, before)


def test_every_part_is_assigned_once(qsource):
    _, path = qsource
    dst = ScaledQL.build("resnet-tiny", ["Pong"], seed=0)
    with pytest.raises(ValueError, match="neither transferred nor re-initialized"):
        load_partial(path, dst, ["Pong"], transfer=("encoder",))
    with pytest.raises(ValueError, match="unknown parts"):
        load_partial(path, dst, ["Pong"], transfer=("encoder", "backbone"), reinitialize=("trunk", "heads"))
    with pytest.raises(ValueError, match="both"):
        load_partial(path, dst, ["Pong"], transfer=("encoder", "trunk"), reinitialize=("trunk", "heads"))


def test_refuses_corrupt_and_non_finite_checkpoints(tmp_path):
    src = ScaledQL.build("resnet-tiny", SRC_GAMES, seed=1)
    with torch.no_grad():
        next(src.model.encoder.parameters()).view(-1)[0] = float("nan")
    path = _save_source(tmp_path, src, SRC_GAMES, "scaled_ql", "resnet-tiny")
    dst = ScaledQL.build("resnet-tiny", ["Pong"], seed=0)
    before = {k: v.clone() for k, v in dst.model.state_dict().items()}
    with pytest.raises(TransferError, match="NaN"):
        load_partial(path, dst, ["Pong"], transfer=("encoder",), reinitialize=("trunk", "heads"))
    assert _unchanged(dst, before)
    # A file changed after it was written fails its checksum.
    ckpt = ckpt_io.resolve_checkpoint(path)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt_io.CheckpointError, match="sha256"):
        load_partial(path, dst, ["Pong"], transfer=("encoder",), reinitialize=("trunk", "heads"))


def test_freeze_marks_only_the_part():
    algo = ScaledQL.build("resnet-tiny", ["Pong"], seed=0)
    names = freeze(algo, ("encoder",))
    assert names and all(n.startswith("encoder.") for n in names)
    for n, p in algo.model.named_parameters():
        assert p.requires_grad == (not n.startswith("encoder.")), n
    with pytest.raises(ValueError, match="unknown parts"):
        freeze(algo, ("tokenizer",))


def test_jowa_new_task_embedding_rows_and_masks(tmp_path):
    src = JOWA.build("jowa-tiny", SRC_GAMES, seed=1)
    path = _save_source(tmp_path, src, SRC_GAMES, "jowa", "jowa-tiny")
    games = ["Breakout", "Pong", "MsPacman"]
    dst = JOWA.build("jowa-tiny", games, seed=2)
    fresh = JOWA.build("jowa-tiny", games, seed=2)
    parts = tuple(dst.weight_parts())
    report = load_partial(path, dst, games, transfer=parts)
    s_state, d_state, f_state = src.model.state_dict(), dst.model.state_dict(), fresh.model.state_dict()
    task = ("world.task_obs_emb.weight", "world.task_act_emb.weight")
    for k in d_state:
        if k in task:
            continue
        # The target Q head is refreshed from the (transferred) online Q head.
        want = s_state[k.replace("target_q_head.module.", "q_head.")] if "target_q_head" in k else s_state[k]
        assert torch.equal(d_state[k], want), k
    for k in task:
        assert torch.equal(d_state[k][0], s_state[k][1])  # Breakout
        assert torch.equal(d_state[k][1], s_state[k][0])  # Pong
        assert torch.equal(d_state[k][2], f_state[k][2])  # MsPacman: fresh
    assert set(report.new) == {f"{k}[MsPacman]" for k in task}
    # The new game's action mask is its own minimal set (9 of 18 ALE actions for MsPacman).
    from workbench.games import minimal_action_set

    mask = dst.actions.valid_mask(torch.tensor([2]))[0]
    assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(minimal_action_set("MsPacman"))

"""Headless inspector tests: sliders drive the FigureWidgets; rollouts round-trip without pickles."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from workbench.viz.inspectors import PlannerInspector, QInspector, explorer
from workbench.viz.params import AnalysisParams, ExplorerParams
from workbench.viz.rollout import Rollout, synthetic_rollout


def _decode(source: str) -> np.ndarray:
    data = base64.b64decode(source.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def rollout() -> Rollout:
    return synthetic_rollout(12, game="Breakout", atoms=21, horizon=2, beam=2, seed=3)


def _assert_q_step(insp: QInspector, r: Rollout, t: int) -> None:
    a = len(r.action_names)
    for i in range(a):
        np.testing.assert_allclose(insp.q_fig.data[i].y, r.q_probs[t, i], rtol=1e-6)
    q = (r.q_probs[t].astype(np.float64) * r.support.astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(insp.q_fig.data[a].x, q, rtol=1e-5)
    chosen = int(r.actions[t])
    assert insp.q_fig.data[chosen].line.width == max(d.line.width for d in insp.q_fig.data[:a])
    assert r.action_names[chosen] in insp.q_fig.layout.title.text
    np.testing.assert_array_equal(_decode(insp.frame_fig.data[0].source)[:, :, 0], r.frames[t])
    assert f"step {t}/" in insp.caption.value and r.action_names[chosen] in insp.caption.value


def test_q_inspector_follows_the_slider(rollout):
    insp = QInspector(rollout)
    assert insp.step.max == len(rollout) - 1
    _assert_q_step(insp, rollout, 0)
    for t in (7, 2, len(rollout) - 1):
        insp.step.value = t
        _assert_q_step(insp, rollout, t)
    score = float(np.sum(rollout.rewards[: len(rollout)]))
    assert f"score {score:g}" in insp.caption.value


def test_q_inspector_without_distributions_shows_q_bars(rollout):
    r = Rollout(game=rollout.game, action_names=rollout.action_names, frames=rollout.frames,
                actions=rollout.actions, rewards=rollout.rewards,
                q_values=np.arange(len(rollout) * 4, dtype=np.float32).reshape(len(rollout), 4))
    insp = QInspector(r)
    insp.step.value = 5
    np.testing.assert_allclose(insp.q_fig.data[0].x, [20, 21, 22, 23])


def test_planner_inspector_tree_and_frames_follow_the_slider(rollout):
    insp = PlannerInspector(rollout)
    for t in (4, 0, len(rollout) - 1):
        insp.step.value = t
        tree = rollout.trees[t]
        ids = [int(row[0]) for row in insp.tree_fig.data[1].customdata]
        assert ids == [n["id"] for n in tree["nodes"]]
        assert [int(x) for x in insp.tree_fig.data[1].x] == [n["depth"] for n in tree["nodes"]]
        n_edges = sum(1 for n in tree["nodes"] if n["parent"] != -1)
        assert len(insp.tree_fig.data[0].x) == 3 * n_edges
        images = [_decode(d.source)[:, :, 0] for d in insp.frames_fig.data]
        for k in range(2):
            want_real = rollout.frames[t + 1 + k] if t + 1 + k < len(rollout) else np.zeros((84, 84), np.uint8)
            np.testing.assert_array_equal(images[k], want_real)
            np.testing.assert_array_equal(images[2 + k], rollout.predicted_frames[t, k])
        assert f"step {t}:" in insp.caption.value


def test_explorer_shares_one_slider(rollout):
    box, q, p = explorer(rollout)
    assert p is not None and p.step is q.step
    q.step.value = 9
    _assert_q_step(q, rollout, 9)
    assert [int(r[0]) for r in p.tree_fig.data[1].customdata] == [n["id"] for n in rollout.trees[9]["nodes"]]
    no_planner = synthetic_rollout(5, planner=False)
    _, _, none = explorer(no_planner)
    assert none is None
    with pytest.raises(ValueError, match="search trees"):
        PlannerInspector(no_planner)


def test_rollout_save_load_roundtrip_without_pickles(rollout, tmp_path):
    d = rollout.save(tmp_path / "r")
    with np.load(d / "rollout.npz", allow_pickle=False) as z:  # would raise on object arrays
        assert z["frames"].dtype == np.uint8
    doc = json.loads((d / "rollout.json").read_text())
    assert doc["game"] == "Breakout" and len(doc["trees"]) == len(rollout)
    back = Rollout.load(d)
    np.testing.assert_array_equal(back.frames, rollout.frames)
    np.testing.assert_array_equal(back.actions, rollout.actions)
    np.testing.assert_allclose(back.q_probs, rollout.q_probs)
    np.testing.assert_array_equal(back.predicted_frames, rollout.predicted_frames)
    assert back.trees == rollout.trees and back.action_names == rollout.action_names


def test_rollout_validation_messages(rollout):
    with pytest.raises(ValueError, match="q_probs must have shape"):
        Rollout(game="Pong", action_names=["A", "B"], frames=rollout.frames, actions=np.zeros(12),
                rewards=np.zeros(12), q_probs=np.ones((12, 3, 5)), support=np.zeros(5))
    with pytest.raises(ValueError, match="0..1"):
        Rollout(game="Pong", action_names=["A", "B"], frames=rollout.frames,
                actions=np.full(12, 2), rewards=np.zeros(12))


def test_notebook_params_reject_unknown_and_invalid_values():
    from workbench.config import namespace_params

    ns = {"source": "synthetic", "game": "ms_pacman", "In": [], "_": 1, "np": np}
    assert ExplorerParams.from_params(**namespace_params(ns)).game == "ms_pacman"
    with pytest.raises(ValueError, match=r"unknown parameter.*'gaem'.*did you mean 'game'"):
        ExplorerParams.from_params(**namespace_params({**ns, "gaem": "Pong"}))
    with pytest.raises(ValueError, match="valid choices are 'checkpoint', 'rollout', 'synthetic'"):
        ExplorerParams.from_params(source="replay")
    with pytest.raises(ValueError, match="needs checkpoint"):
        ExplorerParams.from_params(source="checkpoint", checkpoint="")
    with pytest.raises(ValueError, match="unknown game"):
        ExplorerParams.from_params(source="synthetic", game="Pongg")
    with pytest.raises(ValueError, match="reps"):
        AnalysisParams.from_params(reps=5)


@pytest.mark.parametrize("name, params_cls", [("07_explore_checkpoint", ExplorerParams),
                                              ("06_analysis", AnalysisParams)])
def test_notebooks_are_papermill_ready_and_match_their_params(name, params_cls):
    import dataclasses
    from pathlib import Path

    import nbformat
    import papermill

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert all("def " not in c.source and "class " not in c.source for c in code), "no helpers in notebooks"
    inspected = papermill.inspect_notebook(str(path))
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    assert set(inspected) == set(fields)
    for k, p in inspected.items():  # notebook defaults equal the dataclass defaults
        assert eval(p["default"]) == fields[k].default, k
    assert "from_params(**namespace_params(globals()))" in code[1].source


def test_rollout_from_params_sources(tmp_path):
    from workbench.viz.rollout import rollout_from_params

    p = ExplorerParams.from_params(source="synthetic", game="Breakout", max_steps=6, seed=2,
                                   out_dir=str(tmp_path / "explore"))
    made = rollout_from_params(p)
    assert len(made) == 6 and made.game == "Breakout"
    assert (tmp_path / "explore" / "rollout" / "rollout.npz").is_file()
    back = rollout_from_params(ExplorerParams.from_params(
        source="rollout", rollout_path=str(tmp_path / "explore" / "rollout"), game="Breakout"))
    np.testing.assert_array_equal(back.frames, made.frames)
    with pytest.raises(FileNotFoundError, match="no workbench checkpoint"):
        rollout_from_params(ExplorerParams.from_params(source="checkpoint", checkpoint=str(tmp_path / "none")))


# ----------------------------------------------------------------------------- JOWA checkpoints

JOWA_GAMES = ("Pong", "Breakout")


def _random_sequences(start: int, B: int = 2, L: int = 8):
    """Endless sequence batches (docs/architecture.md layout) with a smooth random frame content."""
    import torch

    from workbench import games

    vm = torch.from_numpy(games.valid_action_mask(list(JOWA_GAMES)))
    step = start
    while True:
        g = torch.Generator().manual_seed(1000 + step)
        obs = torch.randint(0, 256, (B, L, 12, 12), generator=g, dtype=torch.uint8)
        obs = obs.repeat_interleave(7, -1).repeat_interleave(7, -2)  # 84 x 84 blocks
        game_id = torch.arange(B) % len(JOWA_GAMES)
        yield {"obs": obs, "action": torch.randint(0, 3, (B, L), generator=g),
               "reward": torch.randint(-1, 2, (B, L), generator=g).float(),
               "terminal": torch.zeros(B, L), "mask": torch.ones(B, L, dtype=torch.bool),
               "game_id": game_id, "valid_mask": vm[game_id]}
        step += 1


@pytest.fixture(scope="module")
def jowa_run(tmp_path_factory):
    """A jowa-tiny run trained by the real trainer (stage 1 then stage 2), as the pipeline does."""
    import torch

    from workbench.algos.jowa import JOWA
    from workbench.config import PretrainConfig
    from workbench.run import Run
    from workbench.train import TrainConfig, train

    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("jowa") / "run"
    config = PretrainConfig.from_params(model="jowa-tiny", games=",".join(JOWA_GAMES), output_dir=str(run_dir))
    Run(run_dir).create("pretrain", config.params(), config.resolve())
    algo = JOWA.build("jowa-tiny", JOWA_GAMES, stage=1)
    init = {k: v.clone() for k, v in algo.model.state_dict().items()}
    tc = TrainConfig(steps=3, lr=1e-3, log_every=1, checkpoint_every=3, device="cpu", seed=0)
    train(algo, _random_sequences, tc, run_dir / "stage1", progress=False,
          find_unused_parameters=True)
    algo.set_stage(2)
    algo.update_target()
    train(algo, _random_sequences, tc, run_dir, progress=False,
          find_unused_parameters=True)
    algo.model.eval()
    return run_dir, algo, init


@pytest.mark.slow
def test_load_algo_restores_every_jowa_tensor_tokenizer_included(jowa_run):
    import torch

    from workbench.run import load_algo

    run_dir, trained, init = jowa_run
    loaded, run, ckpt = load_algo(run_dir, device="cpu")
    assert ckpt.name == "step_00000003" and run.algo_name == "jowa" and ckpt.parent.parent == run.path
    want, got = trained.model.state_dict(), loaded.model.state_dict()
    assert set(want) == set(got) and any(k.startswith("tokenizer.") for k in got)
    for k, v in want.items():
        assert torch.equal(got[k].cpu(), v.cpu()), k
    # Training moved the tokenizer (stage 1) and the Q head (stage 2): equality above is not the init.
    for prefix in ("tokenizer.encoder.", "tokenizer.codebook.", "world.q_head."):
        assert any(not torch.equal(init[k], want[k]) for k in want if k.startswith(prefix)), prefix


@pytest.fixture(scope="module")
def jowa_rollout(jowa_run):
    from workbench.viz.rollout import play_rollout

    run_dir, _, _ = jowa_run
    return play_rollout(str(run_dir), "Breakout", seed=1, max_steps=6, epsilon=0.0, render_rgb=False,
                        progress=False, planning_horizon=2, beam_width=2)


@pytest.mark.slow
def test_jowa_rollout_holds_root_distributions_trees_and_predicted_frames(jowa_run, jowa_rollout):
    """Each step's data against independent computations with the trained model: full-sequence
    forwards over the rollout's own frames and actions, and greedy decoding without cache.

    The model reads and scores ALE action ids; the rollout holds Breakout's minimal indices
    (0, 1, 2, 3 = ALE 0, 1, 3, 4). Mutation caught: the explorer showing the Q slots or tree
    actions of the wrong buttons (ALE slots read as minimal indices, or the reverse)."""
    import torch

    from workbench import games
    from workbench.models.world_action import TOKENS_PER_STEP

    _, algo, _ = jowa_run
    r = jowa_rollout
    world, tok = algo.model.world, algo.model.tokenizer
    T, A = len(r), len(r.action_names)
    assert r.summary()["search_trees"] and r.meta["game_id"] == 1 and r.meta["planning_horizon"] == 2
    assert r.q_probs.shape == (T, A, 51) and r.predicted_frames.shape == (T, 2, 84, 84)
    np.testing.assert_allclose(r.support, world.support.numpy(), atol=1e-6)
    ctx = 8 - 1 - 2  # context steps that fit with H = 2
    ale = torch.tensor(games.minimal_action_set("Breakout"))  # minimal index -> ALE id
    assert ale.tolist() == [0, 1, 3, 4]
    with torch.no_grad():
        tokens = tok.encode(torch.from_numpy(r.frames))  # (T, 36)
        game = torch.tensor([1])
        for t in range(T):
            lo = max(0, t - ctx)
            steps = tokens[lo:t + 1][None]
            acts = ale[torch.from_numpy(r.actions[lo:t + 1])][None]  # epsilon 0: the planner's own actions
            out = world(steps, acts, game)
            probs = out["q_logits"][0, -1].exp()[ale]  # Q at the current frame's last token, Breakout's buttons
            np.testing.assert_allclose(r.q_probs[t], probs.numpy(), rtol=1e-4, atol=1e-6)
            tree = r.trees[t]
            assert tree["chosen_action"] == r.actions[t]
            assert tree["nodes"][0]["q"] == pytest.approx(float(r.q_values[t].max()), abs=1e-4)
            assert max(n["depth"] for n in tree["nodes"]) == 2
        # Predicted frames of one step: decode the greedy uncached rollout of the tree's best path.
        t = 3
        leaf = max((n for n in r.trees[t]["nodes"] if n["depth"] == 2), key=lambda n: n["score"])
        path = [leaf["action"], r.trees[t]["nodes"][leaf["parent"]]["action"]][::-1]
        assert path[0] == r.actions[t]
        lo = max(0, t - ctx)
        seq = world.interleave(tokens[lo:t][None], ale[torch.from_numpy(r.actions[lo:t])][None])[0].tolist()
        seq += tokens[t].tolist()
        flags = ([False] * 36 + [True]) * (t - lo) + [False] * 36
        assert len(seq) == (t - lo) * TOKENS_PER_STEP + 36
        predicted = []
        for a in path:
            seq, flags = seq + [int(ale[a])], flags + [True]
            for _ in range(36):
                h = world.forward_tokens(torch.tensor([seq]), torch.tensor([flags]), game)[:, -1]
                seq, flags = seq + [int(world.obs_head(h).argmax(-1))], flags + [False]
            predicted.append(seq[-36:])
        want = (tok.decode(torch.tensor(predicted)) * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(r.predicted_frames[t], want)


def test_jowa_rollout_saves_and_loads(jowa_rollout, tmp_path):
    back = Rollout.load(jowa_rollout.save(tmp_path / "r"))
    assert back.trees == jowa_rollout.trees
    np.testing.assert_array_equal(back.predicted_frames, jowa_rollout.predicted_frames)
    np.testing.assert_allclose(back.q_probs, jowa_rollout.q_probs)


def test_jowa_inspectors_follow_the_slider(jowa_rollout):
    r = jowa_rollout
    box, q, p = explorer(r)
    assert p is not None and p.step is q.step and p.horizon == 2
    # Consecutive steps carry different data, so a stale figure would fail the checks below.
    assert not np.array_equal(r.predicted_frames[2], r.predicted_frames[3])
    assert r.trees[2] != r.trees[3]
    for t in (3, 0, len(r) - 1, 2):
        q.step.value = t
        _assert_q_step(q, r, t)
        tree = r.trees[t]
        assert [int(row[0]) for row in p.tree_fig.data[1].customdata] == [n["id"] for n in tree["nodes"]]
        assert [int(x) for x in p.tree_fig.data[1].x] == [n["depth"] for n in tree["nodes"]]
        images = [_decode(d.source)[:, :, 0] for d in p.frames_fig.data]
        np.testing.assert_array_equal(np.stack(images[:2]), r.real_next_frames(t, 2))
        np.testing.assert_array_equal(np.stack(images[2:]), r.predicted_frames[t])
        assert f"step {t}:" in p.caption.value and r.action_names[int(r.actions[t])] in p.caption.value

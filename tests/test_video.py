"""Rollout videos: real env play, mp4 written with moviepy and read back with imageio."""

from __future__ import annotations

import imageio
import numpy as np
import pytest

from workbench import games
from workbench.viz import video
from workbench.viz.rollout import synthetic_rollout


class RandomPolicy:
    """An InspectablePolicy (workbench.algos.base) that explains with Q values, so the overlay draws bars."""

    def __init__(self, num_actions: int, seed: int) -> None:
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)
        self.resets = 0

    def act_explained(self, obs: np.ndarray, game_ids: np.ndarray):
        from workbench.algos.base import Explanation

        assert obs.shape[1:] == (4, 84, 84) and obs.dtype == np.uint8
        q = np.full((len(obs), games.MAX_ACTIONS), -1e9, np.float32)
        q[:, : self.num_actions] = self.rng.normal(size=(len(obs), self.num_actions))
        return q[:, : self.num_actions].argmax(1), [Explanation(q_values=row) for row in q]

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        return self.act_explained(obs, game_ids)[0]

    def reset(self, indices: np.ndarray) -> None:
        self.resets += 1

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None: ...


def _read(path):
    reader = imageio.get_reader(path)
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


def test_record_episode_mp4_with_overlay(tmp_path):
    policy = RandomPolicy(games.num_actions("Pong"), seed=0)
    res = video.record_episode(policy, "pong", tmp_path / "ep.mp4", seed=1, max_steps=12,
                               scale=2, progress=False)
    assert res.steps == 12 and res.game == "Pong" and res.episode_end == "max_steps"
    assert policy.resets == 1
    frames = _read(res.path)
    assert len(frames) == 12
    h, w, c = frames[0].shape
    assert c == 3 and h % 2 == 0 and w % 2 == 0
    assert (h, w) == (420, 320 + 220)  # 210x160 screen upscaled x2 plus the 220 px panel
    panel = frames[-1][:, 330:].astype(int)
    # The panel background is (24, 24, 32); text and Q bars must have changed many pixels.
    changed = np.abs(panel - np.array([24, 24, 32])).sum(axis=2) > 60
    assert changed.sum() > 500
    # The left part is the game screen (lossy codec: compare loosely with a fresh render).
    assert frames[-1][:, :320].mean() > 30


def test_overlay_frame_draws_text_and_bars():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(21, 17, 3), dtype=np.uint8)
    out = video.overlay_frame(frame, step=3, score=2.0, action_name="FIRE", q_values=[0.5, -1.0, 2.0],
                              action_names=["NOOP", "FIRE", "UP"], chosen=1, scale=3)
    assert out.shape[0] % 2 == 0 and out.shape[1] % 2 == 0
    np.testing.assert_array_equal(out[:63, :51], np.repeat(np.repeat(frame, 3, 0), 3, 1))
    panel = out[:, 51:]
    assert (panel != np.array([24, 24, 32], np.uint8)).any(axis=2).sum() > 300
    # the chosen action's bar is red
    assert ((panel[:, :, 0] == 214) & (panel[:, :, 1] == 39)).sum() > 10


def test_write_mp4_pads_odd_sizes_and_rollout_video(tmp_path):
    frames = [np.full((33, 45, 3), 10 * i, np.uint8) for i in range(5)]
    path = video.write_mp4(frames, tmp_path / "odd.mp4", fps=10)
    back = _read(path)
    assert len(back) == 5 and back[0].shape == (34, 46, 3)
    r = synthetic_rollout(7, planner=False)
    back = _read(video.rollout_to_mp4(r, tmp_path / "r.mp4", scale=1))
    assert len(back) == 7 and back[0].shape[0] % 2 == 0 and back[0].shape[1] % 2 == 0
    with pytest.raises(ValueError, match="RGB"):
        video.write_mp4([np.zeros((4, 4), np.uint8)], tmp_path / "g.mp4")


def test_cli_reports_missing_checkpoint(tmp_path, capsys):
    rc = video.main(["--checkpoint", str(tmp_path / "nothing"), "--game", "Pong", "--out", str(tmp_path)])
    assert rc == 2
    assert "no workbench checkpoint" in capsys.readouterr().err
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04")
    rc = video.main(["--checkpoint", str(pickled), "--game", "Pong"])
    assert rc == 2 and "never unpickles" in capsys.readouterr().err


def test_checkpoint_rollout_distributions_and_cli(tmp_path):
    """A tiny Scaled QL checkpoint in the pipeline's layout: the explorer's rollout and the CLI."""
    import json

    from workbench.checkpoint import save_checkpoint
    from workbench.config import PretrainConfig
    from workbench.pipeline import build_algo
    from workbench.run import Run
    from workbench.viz.rollout import play_rollout

    run = tmp_path / "run"
    cfg = PretrainConfig.from_params(model="resnet-tiny", games="Pong,Breakout", output_dir=str(run))
    algo = build_algo(cfg)
    Run(run).create("pretrain", cfg.params(), cfg.resolve())
    save_checkpoint(run, 1, algo.model, target=algo.target_model)

    r = play_rollout(run, "breakout", seed=3, max_steps=6, epsilon=0.0, progress=False)
    assert r.meta["game_id"] == 1 and len(r) == 6
    assert r.q_probs.shape == (6, games.num_actions("Breakout"), 51)
    np.testing.assert_allclose(r.q_probs.sum(-1), 1.0, rtol=1e-5)
    # with epsilon 0 the played action is the argmax of the expected Q the inspector shows
    q = r.q_probs.astype(np.float64) @ r.support.astype(np.float64)
    np.testing.assert_array_equal(r.actions, q.argmax(1))

    rc = video.main(["--checkpoint", str(run), "--game", "Pong", "--episodes", "2",
                     "--out", str(tmp_path / "vids"), "--max-steps", "5", "--seed", "7"])
    assert rc == 0
    summary = json.loads((tmp_path / "vids" / "videos.json").read_text())
    assert [e["seed"] for e in summary["episodes"]] == [7, 8]
    assert all(len(_read(e["path"])) == 5 for e in summary["episodes"])
    with pytest.raises(ValueError, match="was not trained"):
        play_rollout(run, "Seaquest", max_steps=2, progress=False)


def test_play_rollout_reports_the_executed_actions_to_the_policy():
    """``play_rollout`` calls ``observe`` after each step with the action the env executed (after
    epsilon) and the raw reward: the ones the rollout records. Mutation caught: no ``observe``,
    or the planned action passed instead of the executed one."""
    from workbench.viz.rollout import play_rollout

    class Spy(RandomPolicy):
        def __init__(self) -> None:
            super().__init__(games.num_actions("Pong"), seed=0)
            self.events: list[tuple] = []

        def act_explained(self, obs, game_ids):
            actions, ex = super().act_explained(obs, game_ids)
            self.events.append(("act", int(actions[0])))
            return actions, ex

        def observe(self, actions, rewards):
            self.events.append(("observe", int(actions[0]), float(rewards[0])))

    pol = Spy()
    r = play_rollout(pol, "Pong", seed=2, max_steps=250, epsilon=0.5, render_rgb=False, progress=False)
    assert [e[0] for e in pol.events] == ["act", "observe"] * len(r)
    planned = np.array([e[1] for e in pol.events if e[0] == "act"])
    observed = [e[1:] for e in pol.events if e[0] == "observe"]
    np.testing.assert_array_equal([a for a, _ in observed], r.actions)
    np.testing.assert_array_equal([rw for _, rw in observed], r.rewards)
    assert (planned != r.actions).mean() > 0.2  # epsilon 0.5 replaced many
    assert (r.rewards != 0).any()  # Pong scores within 250 steps: rewards are really checked

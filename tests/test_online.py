"""The online C51 agent (workbench.online): logged replay in the public layout, exact resume,
frozen encoders, and convergence to value iteration on an exactly solvable problem.

References are independent of the code under test: the Dopamine-written fixture
``shared/fixtures/dqn_replay_logged`` (its files byte for byte after decompression), the agent's
own stream as the environment saw it (captured by a wrapper), and value iteration on the tiny MDP.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from shared_paths import SHARED

from workbench import checkpoint as ckpt_io
from workbench import games as G
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.data import dqn_replay as dr
from workbench.data.replay_buffer import ReplayBuffer
from workbench.online import OnlineConfig, OnlineError, linearly_decaying_epsilon, run_online
from workbench.run import Run

LOGGED = SHARED / "fixtures" / "dqn_replay_logged"
GAME = "Breakout"  # 4 minimal actions: the tiny environments below have 4 actions too


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- tiny environments


def _frame(state: int) -> np.ndarray:
    """Stripes whose orientation and period name the state (GroupNorm erases plain intensities)."""
    period = (3, 4, 6, 8, 12, 21)[state]
    stripes = (np.arange(84) // period) % 2 == 0
    f = np.where(stripes[None, :] if state % 2 else stripes[:, None], 255, 0)
    return np.broadcast_to(f, (84, 84)).astype(np.uint8)


class TwoStepEnv:
    """Exactly solvable: from s0, action a gives R0[a] and leads to state NEXT[a]; any action
    there gives R1[NEXT[a]] and ends the episode. No n-step bias: the second action changes
    nothing, so every 3-step return of any behaviour is an unbiased sample of Q*."""

    R0 = (0.5, 0.0, -0.4, 0.2)
    NEXT = (1, 2, 1, 2)
    R1 = (0.0, -0.5, 1.0)

    def __init__(self, seed: int = 0) -> None:
        self.state = 0

    def reset(self, *, seed: int | None = None):
        self.state = 0
        return _frame(0), {}

    def step(self, action: int):
        if self.state == 0:
            self.state = self.NEXT[int(action)]
            return _frame(self.state), self.R0[int(action)], False, False, {}
        return _frame(5), self.R1[self.state], True, False, {}

    def close(self) -> None:
        pass


def value_iteration(gamma: float = 0.99, sweeps: int = 100) -> np.ndarray:
    """Q* (3 states x 4 actions) of TwoStepEnv by value iteration over its transition table."""
    q = np.zeros((3, 4))
    for _ in range(sweeps):
        new = np.zeros_like(q)
        for a in range(4):
            new[0, a] = TwoStepEnv.R0[a] + gamma * q[TwoStepEnv.NEXT[a]].max()
            new[1:, a] = TwoStepEnv.R1[1:]  # the episode ends after any action there
        q = new
    return q


class WalkEnv:
    """Variable-length episodes with raw rewards outside [-1, 1] (the replay must clip them);
    every frame it emits is distinct (a counter in its first pixels, restarted per seeded
    episode), so slots can be told apart."""

    def __init__(self, seed: int = 0, tape: list | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.tape = tape  # what the agent saw: ("reset", frame) / ("step", action, frame, reward, done)

    def _emit(self) -> np.ndarray:
        self.count += 1
        f = np.full((84, 84), self.count % 200 + 20, np.uint8)
        f[0, :4] = np.frombuffer(np.uint32(self.count).tobytes(), np.uint8)
        return f

    def reset(self, *, seed: int | None = None):
        if seed is not None:  # a seeded reset determines the episode (frames included), as ALE's does
            self.rng = np.random.default_rng(seed)
            self.count = (seed % 100_003) * 1000
        f = self._emit()
        if self.tape is not None:
            self.tape.append(("reset", f))
        return f, {}

    def step(self, action: int):
        f = self._emit()
        reward = float(self.rng.choice([-2.0, -1.0, 0.0, 0.0, 0.5, 3.0]))
        done = bool(self.rng.random() < 0.15)
        if self.tape is not None:
            self.tape.append(("step", int(action), f, reward, done))
        return f, reward, done, False, {}

    def close(self) -> None:
        pass


def _tiny_eval(env_cls):
    def evaluate_fn(policy, seed):
        env = env_cls(seed)
        obs, _ = env.reset(seed=seed)
        stack = np.zeros((1, 4, 84, 84), np.uint8)
        stack[0, -1] = obs
        total = 0.0
        for _ in range(50):
            a = int(policy.act(stack, np.zeros(1, np.int64))[0])
            obs, r, term, trunc, _ = env.step(a)
            total += r
            if term or trunc:
                break
            stack[0, :-1] = stack[0, 1:]
            stack[0, -1] = obs
        return {"per_game": {GAME: {"scores": [total], "truncated": [False]}}}

    return evaluate_fn


def _config(tmp: Path, **kw) -> OnlineConfig:
    base = dict(game=GAME, output_dir=str(tmp), model="resnet-tiny", cpu_threads=1, eval_every=4 * 10_000)
    base.update(kw)
    return OnlineConfig(**base)


def _stream_rows(tape: list) -> dict[str, np.ndarray]:
    """Rows as Dopamine's buffer holds them, built from what the environment emitted: 3 zero
    padding rows before every episode, (o_t, a_t, clip(r_t), done_t)."""
    frames, actions, rewards, terms = [], [], [], []
    current = None
    for event in tape:
        if event[0] == "reset":
            frames += [np.zeros((84, 84), np.uint8)] * 3
            actions += [0] * 3
            rewards += [0.0] * 3
            terms += [0] * 3
            current = event[1]
        else:
            _, a, f, r, done = event
            frames.append(current)
            actions.append(a)
            rewards.append(float(np.clip(r, -1, 1)))
            terms.append(int(done))
            current = f
    return {"frames": np.stack(frames), "action": np.array(actions), "reward": np.array(rewards, np.float32),
            "terminal": np.array(terms, np.uint8)}


# ----------------------------------------------------------------------------- the logged layout


def _fixture_frames() -> dict[int, np.ndarray]:
    """Stream row -> frame, from the fixture's checkpoints (every row survives in one of them)."""
    out: dict[int, np.ndarray] = {}
    d = LOGGED / "Breakout" / "1" / "replay_logs"
    for c in dr.list_checkpoints(d):
        obs = dr.load_npy_gz(d / dr.file_name("observation", c))
        ids = obs[:, 0, :4].copy().view("<u4")[:, 0].astype(np.int64) - 1
        for i in np.flatnonzero(ids >= 0):
            out[int(ids[i])] = obs[i]
    return out


def test_logged_buffer_reproduces_dopamines_files(tmp_path):
    """Fed the fixture's stream (padding left to the buffer), the logged buffer writes the same
    files as Dopamine + batch_rl did: names, dtypes, shapes and every value, the final partial
    dump included."""
    stream = np.load(LOGGED / "Breakout_stream.npz")
    frames = _fixture_frames()
    buf = ReplayBuffer(500, log_dir=tmp_path)
    real = np.flatnonzero(~stream["padding"])
    assert len(frames) == len(real)  # every real row's frame was recovered
    for g in real.tolist():
        buf.add(frames[g], int(stream["action"][g]), float(stream["reward"][g]), bool(stream["terminal"][g]))
    buf.log_final()
    assert buf.add_count == len(stream["action"])  # the padding the buffer added is the fixture's
    ours = sorted(p.name for p in tmp_path.iterdir())
    theirs = sorted(p.name for p in (LOGGED / "Breakout" / "1" / "replay_logs").iterdir())
    assert ours == theirs
    for name in theirs:
        with gzip.open(tmp_path / name) as f:
            a = np.load(f, allow_pickle=False)
        with gzip.open(LOGGED / "Breakout" / "1" / "replay_logs" / name) as f:
            b = np.load(f, allow_pickle=False)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def _no_pickle_anywhere(root: Path) -> None:
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        assert p.suffix not in ckpt_io.PICKLE_SUFFIXES, p
        head = gzip.open(p).read(2) if p.suffix == ".gz" else p.read_bytes()[:2]
        assert head[:1] != b"\x80", f"{p} starts like a pickle"
        assert "episode_end_indices" not in p.name


def test_online_run_logs_public_layout_and_reader_sees_the_agents_stream(tmp_path):
    """A run's logged files: full checkpoints with the cursor at capacity - 1 and the 1-step
    invalid_range, a final partial dump, no pickle anywhere; every transition the reader (and the
    store builder) returns equals the stream the environment produced, clipped and padded."""
    cap = 61
    tape: list = []
    cfg = _config(tmp_path / "run", frames=4 * 300, capacity=cap, log_replay=True, checkpoint_every=10_000,
                  agent_args={"min_replay_history": 10**6})
    result = run_online(cfg, progress=False, env_factory=lambda seed: WalkEnv(seed, tape),
                        evaluate_fn=_tiny_eval(WalkEnv))
    logs = result.replay_logs
    assert logs is not None and logs == tmp_path / "run" / "data" / "replay" / GAME / "1" / "replay_logs"
    truth = _stream_rows(tape)
    total = len(truth["action"])
    ckpts = dr.list_checkpoints(logs)
    metas = [dr.load_checkpoint_meta(logs, c) for c in ckpts]
    assert len(ckpts) >= 3
    for m in metas[:-1]:
        assert m.capacity == cap and m.add_count % cap == cap - 1
        assert m.invalid_range.tolist() == [cap - 2, cap - 1, 0, 1, 2]
    last = metas[-1]
    assert last.add_count == total % cap and last.capacity == cap
    assert last.invalid_range.tolist() == [(total % cap - 1 + i) % cap for i in range(5)]
    # batch_rl's rule: a dump after every add that leaves add_count at capacity - 1 (mod capacity)
    assert [m.add_count for m in metas[:-1]] == sorted(m.add_count for m in metas[:-1])
    _no_pickle_anywhere(tmp_path / "run")

    checked = 0
    for m in metas:
        true_count = total if m is last else m.add_count
        valid = np.flatnonzero(m.valid_mask(4, 3))
        got = dr.read_transitions(logs, m.checkpoint, valid, n_step=3, gamma=0.99)
        for j, s in enumerate(valid.tolist()):
            g = s + cap * ((true_count - 1 - s) // cap)  # the stream row the slot holds
            assert g >= 3
            np.testing.assert_array_equal(np.moveaxis(got["state"][j], -1, 0), truth["frames"][g - 3 : g + 1])
            assert got["action"][j] == truth["action"][g]
            ret, end = np.float32(0), None
            for k in range(3):
                ret += np.float32(0.99**k) * truth["reward"][g + k]
                if truth["terminal"][g + k]:
                    end = k
                    break
            assert got["reward"][j] == pytest.approx(float(ret), rel=1e-6, abs=1e-7)
            assert got["terminal"][j] == (end is not None)
            if end is None:
                np.testing.assert_array_equal(np.moveaxis(got["next_state"][j], -1, 0), truth["frames"][g : g + 4])
            checked += 1
    assert checked > 100
    assert truth["reward"].min() == -1.0 and truth["reward"].max() == 1.0  # clipping was exercised

    from workbench.data.build import build_store
    from workbench.data.store import ReplayStore

    store = build_store(tmp_path / "run" / "data" / "replay", tmp_path / "store", [GAME], (1,), "all", seed=0,
                        progress=False)
    assert ReplayStore(store).games == (GAME,)


def test_agent_buffer_samples_only_valid_transitions_of_the_true_stream(tmp_path):
    """The agent's own buffer: its validity rule equals Dopamine's for an n-step reader
    (brute force over every slot), and its transitions equal the stream's."""
    tape: list = []
    env = WalkEnv(3, tape)
    buf = ReplayBuffer(37)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=3)
    for t in range(150):
        a = int(rng.integers(4))
        nobs, r, done, _, _ = env.step(a)
        buf.add(obs, a, float(np.clip(r, -1, 1)), done)
        obs = env.reset()[0] if done else nobs
        if t % 7 == 0 and buf.add_count > 8:
            ref = dr.valid_transition_mask(buf.terminal, buf.add_count,
                                           dr.dopamine_invalid_range(buf.cursor, 37, 4, 3), 4, 3)
            np.testing.assert_array_equal(buf.valid(np.arange(37), 3), ref)
    truth = _stream_rows(tape[:-1] if tape[-1][0] == "reset" else tape)
    total = buf.add_count
    idx = buf.sample_indices(rng, 64, 3)
    tr = buf.transitions(idx, 3, 0.99)
    for j, s in enumerate(idx.tolist()):
        g = s + 37 * ((total - 1 - s) // 37)
        np.testing.assert_array_equal(tr["state"][j], truth["frames"][g - 3 : g + 1])
        assert tr["action"][j] == truth["action"][g]


# ----------------------------------------------------------------------------- resume


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = ckpt_io.latest_checkpoint(run_dir)
    assert ckpt is not None
    return {**load_file(str(ckpt / "model.safetensors")), **{f"opt.{k}": v for k, v in
                                                              load_file(str(ckpt / "optimizer.safetensors")).items()}}


@pytest.mark.slow
def test_resumed_run_continues_bit_identically(tmp_path):
    """Killed after a checkpoint and resumed, a run ends with the same weights, Adam state,
    replay, curve, metrics and logged files as one that ran through."""
    kw = dict(frames=4 * 240, capacity=53, log_replay=True, checkpoint_every=40, eval_every=4 * 80,
              agent_args={"min_replay_history": 30, "update_period": 2, "target_update_period": 20,
                          "batch_size": 4, "epsilon_decay_period": 100, "sticky_actions": 0.0})
    env, ev = (lambda seed: WalkEnv(seed)), _tiny_eval(WalkEnv)
    a = run_online(_config(tmp_path / "a", **kw), progress=False, env_factory=env, evaluate_fn=ev)
    run_online(_config(tmp_path / "b", **kw), progress=False, env_factory=env, evaluate_fn=ev, stop_after=150)
    mid = ckpt_io.latest_checkpoint(tmp_path / "b")
    assert mid is not None and 40 <= ckpt_io.read_state(mid)["step"] < 150  # a kill after a checkpoint
    b = run_online(_config(tmp_path / "b", **kw), progress=False, env_factory=env, evaluate_fn=ev)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a.curve == b.curve and len(a.curve) == 4
    for name in ("episodes.jsonl", "curve.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name

    def losses(folder: Path) -> list[dict]:  # every logged value but the wall-clock rate
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in lines]

    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) >= 2
    ra = load_file(str(tmp_path / "a" / "replay" / sorted((tmp_path / "a" / "replay").iterdir())[-1].name))
    rb = load_file(str(tmp_path / "b" / "replay" / sorted((tmp_path / "b" / "replay").iterdir())[-1].name))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    la, lb = a.replay_logs, b.replay_logs
    assert la is not None and lb is not None
    names = sorted(p.name for p in la.iterdir())
    assert names == sorted(p.name for p in lb.iterdir()) and len(names) > 12
    for n in names:
        assert gzip.open(la / n).read() == gzip.open(lb / n).read(), n
    assert json.loads((tmp_path / "b" / "config.json").read_text())["kind"] == "online"


def test_resume_refuses_a_changed_configuration(tmp_path):
    kw = dict(frames=4 * 40, capacity=40, agent_args={"min_replay_history": 10**6})
    run_online(_config(tmp_path, **kw), progress=False, env_factory=WalkEnv, evaluate_fn=_tiny_eval(WalkEnv))
    from workbench.run import ResumeMismatch

    with pytest.raises(ResumeMismatch, match="lr"):
        run_online(_config(tmp_path, lr=1e-5, **kw), progress=False, env_factory=WalkEnv,
                   evaluate_fn=_tiny_eval(WalkEnv))


# ----------------------------------------------------------------------------- initialization


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A pretraining run folder (kind pretrain) on two other games, with one checkpoint."""
    algo = ScaledQL.build("resnet-tiny", ["Pong", "Seaquest"], ScaledQLConfig(), seed=7)
    with torch.no_grad():
        for p in algo.model.encoder.parameters():
            p.add_(0.01)  # weights no fresh initialization can have
    run = Run(tmp_path / "pre")
    run.create("pretrain", {}, {"algo": "scaled_ql", "model": "resnet-tiny", "games": ["Pong", "Seaquest"]})
    ckpt_io.save_checkpoint(run.path, 5, algo.model, target=algo.target_model)
    return run.path


def _encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["frozen", "finetuned"])
def test_transferred_encoder_frozen_stays_bit_identical(tmp_path, pretrained, encoder):
    """The encoder comes from the checkpoint, trunk and heads are fresh; frozen keeps the encoder
    bit-identical through training, finetuned moves it (so the first check can fail)."""
    source = _encoder(load_file(str(ckpt_io.latest_checkpoint(pretrained) / "model.safetensors")))
    kw = dict(frames=4 * 120, capacity=60, checkpoint=str(pretrained), encoder=encoder, lr=1e-3,
              agent_args={"min_replay_history": 20, "update_period": 1, "batch_size": 4, "sticky_actions": 0.0})
    result = run_online(_config(tmp_path / "ft", **kw), progress=False, env_factory=TwoStepEnv,
                        evaluate_fn=_tiny_eval(TwoStepEnv))
    final = load_file(str(result.checkpoint / "model.safetensors"))
    fresh = ScaledQL.build("resnet-tiny", [GAME], ScaledQLConfig(), seed=0).model.state_dict()
    same = [torch.equal(final[k], source[k]) for k in source]
    if encoder == "frozen":
        assert all(same)
        assert all(torch.equal(final[f"target.{k}"], source[k]) for k in source)
    else:
        assert not all(same)
    trunk = [k for k in final if k.startswith("trunk.") and k.endswith("weight")]
    assert trunk and all(not torch.equal(final[k], fresh[k]) for k in trunk)  # trained from a fresh init
    report = json.loads((result.run_dir / "summary.json").read_text())["transferred"]
    assert report["parts"] == {"encoder": "transferred", "trunk": "reinitialized", "heads": "reinitialized"}


def test_frozen_encoder_needs_a_checkpoint_and_same_model(tmp_path, pretrained):
    with pytest.raises(OnlineError, match="needs a pretrained checkpoint"):
        OnlineConfig(encoder="frozen")
    with pytest.raises(OnlineError, match="differs from the checkpoint"):
        _ = OnlineConfig(checkpoint=str(pretrained), model="resnet18").model_name
    with pytest.raises(ValueError, match="valid modes"):
        OnlineConfig(game="Breakout", mode=3)
    with pytest.raises(OnlineError, match="unknown agent_args"):
        OnlineConfig(agent_args={"nstep": 1})
    with pytest.raises(FileNotFoundError):
        OnlineConfig(checkpoint=str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- the schedule and the fixed point


def test_epsilon_is_dopamines_linear_decay():
    assert linearly_decaying_epsilon(250_000, 0, 20_000, 0.01) == 1.0
    assert linearly_decaying_epsilon(250_000, 20_000, 20_000, 0.01) == 1.0
    assert linearly_decaying_epsilon(250_000, 145_000, 20_000, 0.01) == pytest.approx(0.505)
    assert linearly_decaying_epsilon(250_000, 270_000, 20_000, 0.01) == pytest.approx(0.01)
    assert linearly_decaying_epsilon(250_000, 10**7, 20_000, 0.01) == pytest.approx(0.01)


@pytest.mark.slow
def test_online_q_converges_to_value_iteration(tmp_path, pretrained):
    """On TwoStepEnv, the 3-step C51 agent's expected Q at every state and action approaches
    value iteration's Q* (within 0.06 on a scale of 1). The encoder is a frozen transferred one
    (Figure 8's frozen arm), so the CPU time goes to the trunk and head that learn Q."""
    # A support of [-2, 2] (values lie in [-1, 1]): unit-norm features need large head weights to
    # concentrate the mass of a [-10, 10] support, which takes far more steps than a test has.
    kw = dict(frames=4 * 1300, capacity=2000, lr=3e-3, checkpoint=str(pretrained), encoder="frozen",
              agent_args={"min_replay_history": 100, "update_period": 1, "target_update_period": 25, "vmax": 2.0,
                          "batch_size": 8, "epsilon_decay_period": 100, "epsilon_train": 1.0, "sticky_actions": 0.0,
                          "adam_eps": 1e-6})
    result = run_online(_config(tmp_path / "vi", **kw), progress=False, env_factory=TwoStepEnv,
                        evaluate_fn=_tiny_eval(TwoStepEnv))
    settings = OnlineConfig(**{**kw, "output_dir": str(tmp_path / "vi")}).settings
    algo = ScaledQL.build("resnet-tiny", [GAME], settings.c51())
    ckpt_io.load_checkpoint(result.checkpoint, algo.model)
    want = value_iteration()
    stacks = np.zeros((3, 4, 84, 84), np.uint8)
    stacks[0, -1] = _frame(0)
    for s in (1, 2):
        stacks[s, -2], stacks[s, -1] = _frame(0), _frame(s)
    with torch.no_grad():
        out = algo.model(torch.from_numpy(stacks), torch.zeros(3, dtype=torch.long))
    from workbench.losses import expected_q

    q = expected_q(out, algo.support)[:, :4].numpy()
    assert np.abs(q - want).max() < 0.06, (q, want)
    assert result.curve[-1]["score"] == pytest.approx(1.2)  # greedy: action 3 (Q* 0.2 + 0.99), then R1 = 1


def test_command_line_dry_run_and_bad_value(capsys):
    from workbench.online import main

    assert main(["--game", "Breakout", "--mode", "12", "--preset", "paper", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)["resolved"]
    assert resolved["mode"] == 12 and resolved["frames"] == 3_000_000 and resolved["settings"]["n_step"] == 3
    assert resolved["settings"]["capacity"] == 1_000_000 and resolved["settings"]["target_update_period"] == 8000
    with pytest.raises(SystemExit) as exc:
        main(["--encoder", "frozen"])
    assert exc.value.code == 2 and "needs a pretrained checkpoint" in capsys.readouterr().err


def _fake_online_run(path: Path, init: str, scores: list[float], steps: int = 100) -> Path:
    run = Run(path)
    run.create("online", {"seed": 0}, {"algo": "online_c51", "model": "resnet-tiny", "games": [GAME], "mode": 12,
                                       "difficulty": None, "init": init, "agent_steps": steps})
    curve = [{"step": s, "frames": 4 * s, "score": v} for s, v in zip(range(0, steps + 1, steps // (len(scores) - 1)),
                                                                        scores)]
    (path / "curve.json").write_text(json.dumps(curve))
    return path


def test_figure_8_bars_are_mean_with_min_max_over_finished_runs(tmp_path):
    from workbench.viz.analysis import build_figures, online_final_scores, online_finetune_figure

    dirs = [_fake_online_run(tmp_path / "s1", "scratch", [0.0, 1.0]),
            _fake_online_run(tmp_path / "s2", "scratch", [0.0, 5.0]),
            _fake_online_run(tmp_path / "p1", "pretrained-frozen", [0.0, 7.0]),
            _fake_online_run(tmp_path / "p2", "pretrained-frozen", [0.0, 2.0], steps=200)]
    (tmp_path / "p2" / "curve.json").write_text(json.dumps([{"step": 0, "frames": 0, "score": 9.0}]))  # unfinished
    bars = online_final_scores(dirs)
    assert bars == {"Breakout mode 12": {"scratch, resnet-tiny": [1.0, 5.0],
                                         "pretrained (frozen), resnet-tiny": [7.0]}}
    fig = online_finetune_figure(dirs)
    scratch = next(t for t in fig.data if t.name == "scratch, resnet-tiny")
    assert list(scratch.y) == [3.0]
    assert list(scratch.error_y.array) == [2.0] and list(scratch.error_y.arrayminus) == [2.0]
    report = build_figures(dirs, tmp_path / "figs", png=False, reps=10)
    assert {"online_curves", "online_finetune"} <= set(report.figures)


def test_a_finished_run_reopens_without_new_dumps_and_refuses_an_inexact_extension(tmp_path):
    kw = dict(capacity=40, log_replay=True, agent_args={"min_replay_history": 10**6})
    first = run_online(_config(tmp_path, frames=4 * 60, **kw), progress=False, env_factory=WalkEnv,
                       evaluate_fn=_tiny_eval(WalkEnv))
    assert first.replay_logs is not None
    files = {p.name: p.read_bytes() for p in first.replay_logs.iterdir()}
    again = run_online(_config(tmp_path, frames=4 * 60, **kw), progress=False, env_factory=WalkEnv,
                       evaluate_fn=_tiny_eval(WalkEnv))
    assert again.curve == first.curve
    assert {p.name: p.read_bytes() for p in first.replay_logs.iterdir()} == files  # no second final dump
    with pytest.raises(OnlineError, match="cannot be extended"):
        run_online(_config(tmp_path, frames=4 * 120, **kw), progress=False, env_factory=WalkEnv,
                   evaluate_fn=_tiny_eval(WalkEnv))


def test_paper_preset_on_cpu_stops_before_work_with_an_estimate(tmp_path):
    cfg = OnlineConfig(game="Breakout", mode=12, preset="paper", device="cpu", output_dir=str(tmp_path / "p"))
    with pytest.raises(RuntimeError, match=r"182,500 updates of batch 32 with resnet101.*hours"):
        run_online(cfg, progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_the_summary_says_whether_the_agent_beats_random_and_one_button(tmp_path):
    """Real Breakout under the default evaluator: the summary carries the evaluation's honesty fields
    (a 40-step cap is not the papers' protocol) and a verdict against random and the best constant
    action, played under the same protocol (scores recomputed here from the references file)."""
    cfg = _config(tmp_path / "run", frames=4 * 60, eval_episodes=1, eval_max_steps=40,
                  agent_args={"min_replay_history": 10**6})
    summary = run_online(cfg, progress=False).summary
    assert summary["comparable_to_papers"] is False and summary["max_agent_steps"] == 40 and summary["note"]
    refs = json.loads((tmp_path / "run" / "eval" / "references" / "scores.json").read_text())[GAME]
    assert set(refs["constant"]) == set(G.action_names(GAME))
    best = max(refs["constant"].values(), key=lambda c: (c["mean"], -c["index"]))
    assert summary["baselines"][GAME]["constant_best"]["mean"] == best["mean"]
    beaten = summary["final_score"] > refs["random"]["mean"] and summary["final_score"] > best["mean"]
    assert ("NOT better than" not in summary["verdict"][GAME]) == beaten

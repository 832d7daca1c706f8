"""The Multi-Game Decision Transformer (``mgdt``): tokens, returns, causality, expert-action
inference, learning a scripted policy, the sampler's returns-to-go, and the whole pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.algos.mgdt import MGDTAlgo, MGDTPolicy, MGDTSettings, expert_return_logits
from workbench.models.mgdt import (
    MGDT,
    MGDTConfig,
    dequantize_return,
    patchify,
    quantize_return,
    return_values,
    reward_token,
)

TINY = dict(n_layer=2, n_head=2, n_embd=64, dropout=0.0)


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("patch", [14, 12])
def test_patches_match_direct_slicing(patch):
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 84, 84), dtype=np.uint8))
    out = patchify(frames, patch)
    n = 84 // patch
    assert out.shape == (2, 3, n * n, patch * patch)
    for b in range(2):
        for t in range(3):
            for r in range(n):
                for c in range(n):
                    ref = frames[b, t, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(-1)
                    assert torch.equal(out[b, t, r * n + c], ref)


def test_return_quantization_and_inverse():
    cfg = MGDTConfig(**TINY)  # MGDT's 120 bins over [-20, 100]
    ints = torch.arange(-20, 100, dtype=torch.float32)
    assert torch.equal(quantize_return(ints, cfg), torch.arange(120))
    assert torch.equal(dequantize_return(quantize_return(ints, cfg), cfg), ints)  # exact for integer returns
    assert quantize_return(torch.tensor([-25.0, -20.5, 99.9, 100.0, 250.0]), cfg).tolist() == [0, 0, 119, 119, 119]
    # A coarser grid: brute force (the last bin whose lower edge is <= R) against the formula.
    half = MGDTConfig(**TINY, num_return_bins=10, return_min=0.0, return_max=5.0)
    edges = [0.5 * i for i in range(10)]
    for r in np.linspace(-1, 6, 57):
        want = max([i for i, e in enumerate(edges) if e <= r], default=0)
        got = int(quantize_return(torch.tensor([r]), half)[0])
        assert got == want, r
        if 0 <= r < 5:
            low = float(dequantize_return(torch.tensor([got]), half)[0])
            assert low <= r < low + 0.5
    assert torch.equal(quantize_return(return_values(half), half), torch.arange(10))
    assert reward_token(torch.tensor([-3.0, -1.0, 0.0, 0.5, 7.0])).tolist() == [0, 0, 1, 2, 2]


def test_bad_model_settings_name_the_problem():
    with pytest.raises(ValueError, match="patch must divide"):
        MGDTConfig(patch=13)
    with pytest.raises(ValueError, match="return_max > return_min"):
        MGDTConfig(return_min=5.0, return_max=5.0)
    with pytest.raises(ValueError, match="valid: mgdt-10m, mgdt-40m, mgdt-200m, mgdt-tiny"):
        MGDTAlgo.build("mgdt-1b", ["Pong"])
    with pytest.raises(ValueError, match="kappa must be"):
        MGDTSettings(kappa=-1.0)


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("attention", ["patch_block", "causal"])
@pytest.mark.parametrize("single", [True, False])
def test_action_never_sees_its_own_future(attention, single):
    """Action logits of step t are unchanged by a_t, r_t and everything of later steps, and
    change with R_t (the return it is conditioned on); with a single return token only R_0 is
    read, and it reaches every step's action."""
    torch.manual_seed(0)
    model = MGDT(MGDTConfig(**TINY, attention=attention, single_return_token=single)).eval()
    B, T = 2, 4
    g = torch.Generator().manual_seed(1)

    def draw():
        return (torch.randint(0, 256, (B, T, 84, 84), dtype=torch.uint8, generator=g),
                torch.randint(0, 120, (B, T), generator=g), torch.randint(0, 18, (B, T), generator=g),
                torch.randint(0, 3, (B, T), generator=g))

    base, other = draw(), draw()
    with torch.no_grad():
        ref = model(*base)
        for t in range(T):
            # a_t and r_t of step t, and every token of the steps after it, from another sequence
            x = [v.clone() for v in base]
            for k in range(4):
                x[k][:, t + 1:] = other[k][:, t + 1:]
            x[2][:, t], x[3][:, t] = other[2][:, t], other[3][:, t]
            out = model(*x)
            torch.testing.assert_close(out["action"][:, :t + 1], ref["action"][:, :t + 1], rtol=0, atol=1e-6)
            # and the return prediction at o_t does not see R_t either
            x[1][:, t] = other[1][:, t]
            out = model(*x)
            torch.testing.assert_close(out["return"][:, :t + 1], ref["return"][:, :t + 1], rtol=0, atol=1e-6)
            reaches = (out["action"][:, t] - ref["action"][:, t]).abs().max() > 1e-4
            assert reaches == (not single or t == 0)  # R_t reaches a_t (only R_0 with a single return token)
        if single:  # R_0 reaches the action of every step
            x = [v.clone() for v in base]
            x[1][:, 0] = other[1][:, 0]
            assert ((model(*x)["action"] - ref["action"]).abs().amax(dim=(0, 2)) > 1e-4).all()
        # the reward head at a_t sees its action, not its reward
        x = [v.clone() for v in base]
        x[3][:, -1] = (x[3][:, -1] + 1) % 3
        torch.testing.assert_close(model(*x)["reward"], ref["reward"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- inference


def test_expert_reweighting_is_the_formula():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    values = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    p = torch.softmax(logits, -1)[0].numpy()
    w = p * np.exp(10 * (values.numpy() + 1) / 4)
    got = torch.softmax(expert_return_logits(logits, values, 10.0, -1.0, 3.0), -1)[0].numpy()
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-5)


def _train(model: MGDT, algo: MGDTAlgo, make_batch, steps: int, lr: float = 3e-3) -> dict[str, float]:
    opt = torch.optim.AdamW(algo.param_groups(), lr=lr)
    gen = np.random.default_rng(0)
    metrics: dict[str, float] = {}
    for _ in range(steps):
        loss, m = algo.loss(make_batch(gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        metrics = {k: float(v) for k, v in m.items()}
    return metrics


@pytest.mark.slow
def test_expert_action_inference_picks_the_high_return_action():
    """One-step episodes from one state: action 0 returns 2 (60% of the data), action 1 returns -4
    and action 2 returns 8 (20% each); the average return is 2. Conditioned on the average, the
    model repeats the dataset's common action; expert-action inference finds the best one."""
    torch.manual_seed(0)
    games = [3]  # one game of 3 actions (ALE ids 0..2)
    algo = MGDTAlgo(MGDT(MGDTConfig(**TINY, context_steps=1, num_return_bins=15, return_min=-5.0,
                                    return_max=10.0)), games)
    returns = np.array([2.0, -4.0, 8.0])

    def batch(gen):
        a = gen.choice(3, size=(64, 1), p=[0.6, 0.2, 0.2])
        return {"obs": torch.zeros(64, 1, 84, 84, dtype=torch.uint8), "action": torch.from_numpy(a),
                "reward": torch.zeros(64, 1), "return_to_go": torch.from_numpy(returns[a]).float(),
                "mask": torch.ones(64, 1, dtype=torch.bool), "game_id": torch.zeros(64, dtype=torch.long)}

    _train(algo.model, algo, batch, 100)
    obs = np.zeros((64, 4, 84, 84), np.uint8)
    ids = np.zeros(64, np.int64)
    expert = MGDTPolicy(algo, seed=0)
    acts, why = expert.act_explained(obs, ids)
    assert np.mean(acts == 2) >= 0.8
    conditioned = np.array([e.extra["conditioned_return"] for e in why])
    np.testing.assert_array_equal(acts[conditioned == 8.0], 2)  # the action follows its return
    model_p = why[0].extra["return_probs"]
    assert abs(model_p[7] - 0.6) < 0.1 and abs(model_p[13] - 0.2) < 0.1  # bins of 2 and 8: the data's mix
    average = MGDTPolicy(MGDTAlgo(algo.model, games, MGDTSettings(target_return=float(returns @ [0.6, 0.2, 0.2]))))
    acts, why = average.act_explained(obs, ids)
    assert (acts == 0).all() and all(e.extra["conditioned_return"] == 2.0 for e in why)
    # plain conditioning decrements the return-to-go by the clipped observed reward
    average.observe(acts, np.full(64, 5.0))
    np.testing.assert_array_equal(average.return_to_go, 1.0)


@pytest.mark.slow
def test_tiny_mgdt_reproduces_a_scripted_policy():
    """The scripted policy presses action k on screens of brightness level k (noisy frames);
    after training on its 4-step segments, the policy (through act/observe over an episode, the
    context filling and sliding) presses the same buttons."""
    torch.manual_seed(0)
    algo = MGDTAlgo(MGDT(MGDTConfig(**TINY)), [4])

    def frames(gen, shape):
        level = gen.integers(0, 4, shape)
        noise = gen.integers(0, 40, shape + (84, 84))
        return (level[..., None, None] * 60 + noise).astype(np.uint8), level

    def batch(gen):
        f, a = frames(gen, (16, 4))
        return {"obs": torch.from_numpy(f), "action": torch.from_numpy(a), "reward": torch.zeros(16, 4),
                "return_to_go": torch.zeros(16, 4), "mask": torch.ones(16, 4, dtype=torch.bool),
                "game_id": torch.zeros(16, dtype=torch.long)}

    untrained = algo.policy()
    gen = np.random.default_rng(123)
    f, level = frames(gen, (64,))
    assert np.mean(untrained.act(np.repeat(f[:, None], 4, axis=1), np.zeros(64, np.int64)) == level) < 0.6
    metrics = _train(algo.model, algo, batch, 260, lr=1e-3)
    assert metrics["dt/action_accuracy"] > 0.95
    policy = algo.policy()
    hits = []
    for _ in range(6):  # an episode of 6 steps for 8 environments
        f, level = frames(gen, (8,))
        acts = policy.act(np.repeat(f[:, None], 4, axis=1), np.zeros(8, np.int64))
        hits.append(acts == level)
        policy.observe(acts, np.zeros(8))
    assert policy.length.tolist() == [3] * 8
    assert np.mean(hits) >= 0.95


# ----------------------------------------------------------------------------- data


def test_sampler_returns_to_go_are_sums_to_the_end_of_each_stored_piece(dopamine_store):
    from workbench.data.sampler import SequenceSampler
    from workbench.data.store import ReplayStore

    store = ReplayStore(dopamine_store)
    kw = dict(batch_size=16, seq_len=4, seed=3, prefetch=1, workers=1, pin_memory=False)
    plain = SequenceSampler(store, ["Pong", "Breakout"], **kw)
    with_rtg = SequenceSampler(store, ["Pong", "Breakout"], returns_to_go=True, **kw)
    for i in range(3):
        a, b = plain.sample(i), with_rtg.sample(i)
        assert set(b) == set(a) | {"return_to_go"}
        assert all(torch.equal(a[k], b[k]) for k in a)  # opt-in: the other outputs are unchanged
        gid, local = with_rtg._draw(with_rtg._rng(i))
        for s in range(16):
            game = with_rtg.games[gid[s]]
            gd = store.game(game)
            reward, eps = np.asarray(gd.reward, np.float64), np.asarray(gd.episodes)
            p = int(with_rtg._starts[gid[s]][local[s]])
            for j in range(4):
                if not b["mask"][s, j]:
                    assert b["return_to_go"][s, j] == 0
                    continue
                first, end, _ = next(e for e in eps if e[0] <= p + j < e[1])
                assert b["return_to_go"][s, j] == pytest.approx(reward[p + j:end].sum())
    with pytest.raises(Exception, match="returns_to_go must be True or False"):
        SequenceSampler(store, ["Pong"], returns_to_go="yes", **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def mgdt_run(tmp_path_factory):
    from workbench.config import PretrainConfig
    from workbench.pipeline import pretrain

    run_dir = tmp_path_factory.mktemp("mgdt") / "run"
    config = PretrainConfig.from_params(model="mgdt-tiny", games="Pong", record_steps=200, steps=4, batch_size=8,
                                        output_dir=str(run_dir), eval_episodes=1, eval_max_steps=20, num_envs=1)
    assert config.algo_name == "mgdt"
    return run_dir, pretrain(config, progress=False)


@pytest.mark.slow
def test_mgdt_trains_evaluates_explores_and_is_analysed(mgdt_run, tmp_path):
    from workbench.config import EvaluateConfig, PretrainConfig
    from workbench.pipeline import evaluate_run, pretrain
    from workbench.viz.analysis import build_figures, method_labels, read_run
    from workbench.viz.rollout import Rollout, play_rollout

    run_dir, result = mgdt_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and all(k in records[-1] for k in ("loss/action", "loss/return", "loss/reward"))
    assert result.summary["algo"] == "mgdt" and result.scores["per_game"]["Pong"]["lengths"] == [20]

    report = evaluate_run(EvaluateConfig(checkpoint=str(run_dir), episodes=2, num_envs=2, max_steps=15),
                          progress=False)
    assert report["per_game"]["Pong"]["lengths"] == [15, 15]

    rollout = play_rollout(run_dir, "Pong", max_steps=6, epsilon=0.0, progress=False, render_rgb=False)
    assert rollout.q_values is not None and rollout.q_values.shape == (6, 6)  # P(a | R) over Pong's 6 actions
    np.testing.assert_allclose(rollout.q_values.sum(1), 1.0, rtol=1e-5)
    # sampled (the colab's): from the better half of Pong's 6 actions, the distribution shown
    assert (rollout.q_values[np.arange(6), rollout.actions] > 0).all()
    assert ((rollout.q_values > 0).sum(1) == 3).all()
    conditioned = rollout.extras["conditioned_return"]
    assert conditioned.shape == (6,) and np.all((conditioned >= -20) & (conditioned < 100))
    assert rollout.extras["expert_return_probs"].shape == (6, 120)
    np.testing.assert_array_equal(Rollout.load(rollout.save(tmp_path / "r")).extras["conditioned_return"], conditioned)
    # The explorer's step view shows the action distribution and the return the step conditioned on.
    from workbench.viz.inspectors import QInspector

    view = QInspector(rollout)
    view.step.value = 4
    assert f"conditioned return {float(conditioned[4]):.3g}" in view.caption.value
    assert list(view.q_fig.data[0].x) == pytest.approx(list(rollout.q_values[4]))  # P(a | R) bars
    assert PretrainConfig(algo="mgdt", model="mgdt-10m").algo_name == "mgdt"  # -p algo mgdt with an MGDT preset

    # the same aggregate figures as a Scaled-QL-family run (MTBC)
    bc_dir = tmp_path / "bc"
    pretrain(PretrainConfig.from_params(model="resnet-tiny", algo="bc", games="Pong", record_steps=200, steps=2,
                                        batch_size=8, output_dir=str(bc_dir), eval_episodes=1, eval_max_steps=20,
                                        num_envs=1), progress=False)
    runs = [read_run(run_dir), read_run(bc_dir)]
    assert runs[0].algo == "mgdt" and not [p for p in runs[0].problems if "metrics" in p]
    labels = method_labels(runs)
    assert labels[0].startswith("MGDT/mgdt-tiny") and labels[1].startswith("MTBC/resnet-tiny")  # the papers' names
    figures = build_figures([run_dir, bc_dir], tmp_path / "analysis", png=False, reps=50)
    for name in ("aggregates", "performance_profiles", "probability_of_improvement"):
        assert name in figures.figures, f"no {name} figure in {sorted(figures.figures)}"
        text = json.dumps(json.loads(figures.figures[name].to_json()))  # undo plotly's escaped '/'
        assert all(lab in text for lab in labels), (name, labels)


@pytest.mark.slow
def test_pretrain_notebook_runs_mgdt(tmp_path, monkeypatch):
    """``papermill notebooks/02_pretrain.ipynb out.ipynb -p model mgdt-tiny`` (tiny sizes)."""
    from test_notebooks import TINY_PRETRAIN, run

    monkeypatch.delenv("WORKBENCH_ROOT", raising=False)
    params = {**TINY_PRETRAIN, "model": "mgdt-tiny", "games": "Pong", "steps": 3}
    run("02_pretrain.ipynb", tmp_path, output_dir="runs/mgdt", **params)
    config = json.loads((tmp_path / "runs" / "mgdt" / "config.json").read_text())
    assert config["resolved"]["algo"] == "mgdt" and config["params"]["model"] == "mgdt-tiny"
    scores = json.loads((tmp_path / "runs" / "mgdt" / "eval" / "scores.json").read_text())
    assert list(scores["per_game"]) == ["Pong"]

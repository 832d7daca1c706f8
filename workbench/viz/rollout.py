"""Rollouts: one played episode with what the agent saw and believed at every step.

A :class:`Rollout` holds, per agent step ``t``: the observation frame the agent acted on
(``frames[t]``, the newest frame of its stack), optionally the RGB screen, the action taken,
the raw reward received, the per-action C51 distributions (or plain Q values), and for JOWA
the beam-search tree and the world model's predicted next frames. It is saved as
``rollout.npz`` (arrays, loaded with ``allow_pickle=False``) + ``rollout.json`` (game, action
names, search trees, metadata): nothing is ever pickled.

``play_rollout`` plays one eval-protocol episode with a policy or checkpoint; the
``synthetic_rollout`` helper builds a deterministic random rollout for tests and demos.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm.auto import tqdm

from workbench import envs, games
from workbench.algos.base import EvalOptions, InspectablePolicy, Policy, check_policy
from workbench.evaluate import epsilon_greedy
from workbench.run import load_algo

__all__ = [
    "ROLLOUT_FORMAT",
    "Rollout",
    "StepInsight",
    "inspect_policy_step",
    "load_policy",
    "play_rollout",
    "rollout_from_params",
    "synthetic_rollout",
    "tree_to_dict",
]

ROLLOUT_FORMAT = "workbench-rollout-v1"
_NODE_FIELDS = ("id", "parent", "depth", "action", "reward", "q", "score", "kept", "terminal")
_ARRAYS = ("frames", "actions", "rewards", "rgb_frames", "q_probs", "support", "q_values",
           "predicted_frames")


def tree_to_dict(tree: Any) -> dict[str, Any] | None:
    """A ``planner.SearchTree`` (or an equivalent dict) as plain JSON-able data."""
    if tree is None:
        return None

    def get(obj: Any, name: str) -> Any:
        return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)

    nodes = []
    for n in get(tree, "nodes"):
        d = {k: get(n, k) for k in _NODE_FIELDS}
        for k in ("id", "parent", "depth", "action"):
            d[k] = int(d[k])
        for k in ("reward", "q", "score"):
            d[k] = float(d[k])
        for k in ("kept", "terminal"):
            d[k] = bool(d[k])
        nodes.append(d)
    chosen = get(tree, "chosen_action")
    return {"chosen_action": None if chosen is None else int(chosen), "nodes": nodes}


@dataclass
class Rollout:
    """One episode (or its first ``T`` steps) with per-step model outputs. See module doc."""

    game: str
    action_names: list[str]
    frames: np.ndarray
    """uint8 (T, 84, 84): the newest observation frame at each step (what the agent saw)."""
    actions: np.ndarray
    """int64 (T,): minimal-set action taken at each step (after epsilon)."""
    rewards: np.ndarray
    """float32 (T,): raw game reward received after the step's action."""
    rgb_frames: np.ndarray | None = None
    """uint8 (T, H, W, 3): the env's RGB screen at each step, for display and video."""
    q_probs: np.ndarray | None = None
    """float32 (T, A, atoms): C51 probabilities of the game's A valid actions."""
    support: np.ndarray | None = None
    """float32 (atoms,): C51 atom values."""
    q_values: np.ndarray | None = None
    """float32 (T, A): expected Q per action (derived from q_probs when those exist)."""
    trees: list[dict[str, Any] | None] | None = None
    """Per step: the planner's search tree (``tree_to_dict`` form) or None."""
    predicted_frames: np.ndarray | None = None
    """uint8 (T, K, 84, 84): world-model predictions of frames t+1..t+K along the chosen path."""
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Per step, what the policy's explanations added (``Explanation.extra``, the keys every step
    has), each (T, ...): e.g. MGDT's ``conditioned_return``. Saved as ``extra.<name>`` arrays."""

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames)
        self.actions = np.asarray(self.actions, dtype=np.int64)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.action_names = [str(a) for a in self.action_names]
        t, a = len(self.actions), len(self.action_names)

        def check(name: str, arr: np.ndarray | None, shape: tuple[int | None, ...]) -> None:
            if arr is None:
                return
            ok = arr.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, arr.shape))
            if not ok:
                want = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"Rollout.{name} must have shape {want}, got {arr.shape}")

        if self.frames.dtype != np.uint8 or self.frames.ndim != 3 or len(self.frames) != t:
            raise ValueError(
                f"Rollout.frames must be uint8 (T={t}, H, W), got {self.frames.dtype} {self.frames.shape}"
            )
        check("rewards", self.rewards, (t,))
        if self.rgb_frames is not None:
            self.rgb_frames = np.asarray(self.rgb_frames, dtype=np.uint8)
            check("rgb_frames", self.rgb_frames, (t, None, None, 3))
        if self.q_probs is not None:
            self.q_probs = np.asarray(self.q_probs, dtype=np.float32)
            if self.support is None:
                raise ValueError("Rollout.q_probs needs support (the C51 atom values)")
            self.support = np.asarray(self.support, dtype=np.float32)
            check("q_probs", self.q_probs, (t, a, len(self.support)))
            if self.q_values is None:
                self.q_values = (self.q_probs.astype(np.float64) @ self.support.astype(np.float64)).astype(np.float32)
        if self.q_values is not None:
            self.q_values = np.asarray(self.q_values, dtype=np.float32)
            check("q_values", self.q_values, (t, a))
        if self.trees is not None:
            if len(self.trees) != t:
                raise ValueError(f"Rollout.trees has {len(self.trees)} entries for {t} steps")
            self.trees = [tree_to_dict(tr) for tr in self.trees]
        if self.predicted_frames is not None:
            self.predicted_frames = np.asarray(self.predicted_frames, dtype=np.uint8)
            check("predicted_frames", self.predicted_frames, (t, None) + self.frames.shape[1:])
        self.extras = {str(k): np.asarray(v) for k, v in self.extras.items()}
        for k, v in self.extras.items():
            if v.ndim == 0 or len(v) != t:
                raise ValueError(f"Rollout.extras[{k!r}] must have one entry per step (T={t}), got shape {v.shape}")
        if len(self.actions) and (self.actions.min() < 0 or self.actions.max() >= a):
            raise ValueError(f"Rollout.actions must be minimal-set indices in 0..{a - 1}")

    def __len__(self) -> int:
        return int(len(self.actions))

    @property
    def has_q(self) -> bool:
        return self.q_values is not None

    @property
    def has_distributions(self) -> bool:
        return self.q_probs is not None

    @property
    def has_planner(self) -> bool:
        return self.trees is not None and any(tr is not None for tr in self.trees)

    def scores(self) -> np.ndarray:
        """Cumulative raw score after each step, float64 (T,)."""
        return np.cumsum(self.rewards.astype(np.float64))

    def summary(self) -> dict[str, Any]:
        """A short description for notebooks and logs."""
        return {
            "game": self.game, "steps": len(self), "score": float(self.rewards.sum()),
            "q_distributions": self.has_distributions, "q_values": self.has_q,
            "search_trees": self.has_planner, "predicted_frames": self.predicted_frames is not None,
            **{k: v for k, v in self.meta.items()
               if k in ("checkpoint", "algo", "model", "seed", "episode_end", "synthetic", "planning_horizon",
                        "beam_width")},
        }

    def display_frame(self, t: int) -> np.ndarray:
        """The RGB screen at step ``t`` when recorded, else the 84x84 observation frame."""
        return self.rgb_frames[t] if self.rgb_frames is not None else self.frames[t]

    def real_next_frames(self, t: int, k: int) -> np.ndarray:
        """Observation frames t+1..t+k; steps past the rollout's end are black frames."""
        out = np.zeros((k,) + self.frames.shape[1:], np.uint8)
        for i in range(k):
            if t + 1 + i < len(self):
                out[i] = self.frames[t + 1 + i]
        return out

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``rollout.npz`` + ``rollout.json`` into ``directory`` (created); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}
        arrays.update({f"extra.{k}": np.asarray(v) for k, v in self.extras.items()})
        tmp = d / ".rollout.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, d / "rollout.npz")
        doc = {"format": ROLLOUT_FORMAT, "game": self.game, "action_names": self.action_names,
               "trees": self.trees, "meta": self.meta}
        tmpj = d / ".rollout.tmp.json"
        tmpj.write_text(json.dumps(doc))
        os.replace(tmpj, d / "rollout.json")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Rollout:
        """Read a rollout written by :meth:`save` (arrays with ``allow_pickle=False``)."""
        d = Path(directory)
        npz, js = d / "rollout.npz", d / "rollout.json"
        if not npz.is_file() or not js.is_file():
            raise FileNotFoundError(f"{d} is not a saved rollout: expected rollout.npz and rollout.json")
        doc = json.loads(js.read_text())
        if doc.get("format") != ROLLOUT_FORMAT:
            raise ValueError(f"{js}: unknown format {doc.get('format')!r}, expected {ROLLOUT_FORMAT!r}")
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k in _ARRAYS}
            extras = {k[len("extra."):]: z[k] for k in z.files if k.startswith("extra.")}
        return cls(game=doc["game"], action_names=doc["action_names"], trees=doc.get("trees"),
                   meta=doc.get("meta", {}), extras=extras, **arrays)


# ---------------------------------------------------------------------- playing


@dataclass
class StepInsight:
    """What a policy reveals about one decision (all optional except the greedy action)."""

    greedy_action: int
    q_probs: np.ndarray | None = None  # (A, atoms)
    support: np.ndarray | None = None  # (atoms,)
    q_values: np.ndarray | None = None  # (A,)
    tree: dict[str, Any] | None = None
    predicted_frames: np.ndarray | None = None  # (K, 84, 84)
    extra: dict[str, Any] = field(default_factory=dict)  # Explanation.extra


def inspect_policy_step(policy: Policy, obs: np.ndarray, game_id: int, num_actions: int) -> StepInsight:
    """Ask a policy for its action and, when it is an ``InspectablePolicy``, its explanation of
    it (``workbench.algos.base.Explanation``), for one state ``(1,4,84,84)``; the game's
    ``num_actions`` valid slots are kept. A plain policy still plays; its rollout has no Q."""
    game_ids = np.asarray([game_id], dtype=np.int64)
    if not isinstance(policy, InspectablePolicy):
        return StepInsight(greedy_action=int(_np(policy.act(obs, game_ids))[0]))
    actions, explanations = policy.act_explained(obs, game_ids)
    e = explanations[0]
    return StepInsight(
        greedy_action=int(_np(actions)[0]),
        q_probs=None if e.q_probs is None else _np(e.q_probs)[:num_actions],
        support=None if e.support is None else _np(e.support).reshape(-1),
        q_values=None if e.q_values is None else _np(e.q_values)[:num_actions],
        tree=tree_to_dict(e.tree) if e.tree is not None else None,
        predicted_frames=None if e.predicted_frames is None else _np(e.predicted_frames).astype(np.uint8),
        extra=dict(e.extra),
    )


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def play_rollout(
    source: Any,
    game: str,
    *,
    seed: int = 0,
    max_steps: int = 300,
    epsilon: float = 0.001,
    game_id: int | None = None,
    render_rgb: bool = True,
    progress: bool = True,
    planning_horizon: int = 2,
    beam_width: int = 2,
) -> Rollout:
    """Play one eval-protocol episode (at most ``max_steps`` agent steps) and record a Rollout.

    ``source`` is a Policy object (see ``inspect_policy_step`` for the optional hooks that fill
    Q distributions, trees and predicted frames) or a checkpoint path, loaded with
    :func:`load_policy`. ``game_id`` is the game's index in the run's games
    (taken from the checkpoint's config when ``source`` is a path; 0 otherwise). As in
    ``workbench.evaluate``, the env is reset with ``seed`` and the epsilon stream is
    ``default_rng(seed)`` through its ``epsilon_greedy``: with
    ``seed=evaluate.episode_seed(eval_seed, game, k)`` this replays the evaluator's episode k.
    ``planning_horizon`` and ``beam_width`` set a JOWA checkpoint's planner (H, K). After each
    step the policy's ``observe`` gets the executed action (after epsilon) and the raw reward.
    """
    game = games.canonical_game(game)
    meta: dict[str, Any] = {"seed": int(seed), "epsilon": float(epsilon), "max_steps": int(max_steps)}
    if isinstance(source, (str, os.PathLike)):
        policy, info = load_policy(source, game, planning_horizon=planning_horizon, beam_width=beam_width)
        meta.update(info)
        if game_id is None:
            game_id = int(info.get("game_id", 0))
    else:
        policy = source
        meta["policy"] = type(source).__name__
    game_id = 0 if game_id is None else int(game_id)
    check_policy(policy)
    n_act = games.num_actions(game)
    env = envs.make_env(game, protocol="eval", seed=seed, render_rgb=render_rgb)
    stacker = envs.FrameStacker(1, games.geometry_of(game).frame_shape)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    stacker.reset([0], obs[None])
    policy.reset(np.array([0]))
    frames: list[np.ndarray] = []
    rgbs: list[np.ndarray] = []
    actions: list[int] = []
    rewards: list[float] = []
    insights: list[StepInsight] = []
    bar = tqdm(total=max_steps, desc=f"{game} rollout", disable=not progress)
    try:
        for _ in range(max_steps):
            frames.append(obs.copy())
            if render_rgb:
                rgbs.append(cast(np.ndarray, env.render()).copy())  # render_mode="rgb_array": one frame
            ins = inspect_policy_step(policy, stacker.stacks.copy(), game_id, n_act)
            action = epsilon_greedy(rng, ins.greedy_action, n_act, epsilon)
            obs, reward, terminated, truncated, _ = env.step(action)
            policy.observe(np.array([action], np.int64), np.array([float(reward)]))  # executed, not planned
            stacker.push(obs[None])
            actions.append(action)
            rewards.append(float(reward))
            insights.append(ins)
            bar.update(1)
            if terminated or truncated:
                meta["episode_end"] = "terminated" if terminated else "truncated"
                break
    finally:
        bar.close()
        env.close()
    return _rollout_from_steps(game, frames, rgbs if render_rgb else None, actions, rewards, insights, meta)


def _rollout_from_steps(
    game: str,
    frames: list[np.ndarray],
    rgbs: list[np.ndarray] | None,
    actions: list[int],
    rewards: list[float],
    insights: list[StepInsight],
    meta: dict[str, Any],
) -> Rollout:
    q_probs = support = q_values = trees = pred = None
    if insights and all(i.q_probs is not None for i in insights):
        q_probs = np.stack([i.q_probs for i in insights if i.q_probs is not None])
        support = insights[0].support
    elif insights and all(i.q_values is not None for i in insights):
        q_values = np.stack([i.q_values for i in insights if i.q_values is not None])
    if any(i.tree is not None for i in insights):
        trees = [i.tree for i in insights]
    if insights and all(i.predicted_frames is not None for i in insights):
        pred = np.stack([i.predicted_frames for i in insights if i.predicted_frames is not None])
    shared = set.intersection(*(set(i.extra) for i in insights)) if insights else set()
    extras = {k: np.stack([np.asarray(i.extra[k]) for i in insights]) for k in sorted(shared)}
    return Rollout(
        game=game, action_names=list(games.action_names(game)), frames=np.stack(frames),
        actions=np.asarray(actions), rewards=np.asarray(rewards),
        rgb_frames=np.stack(rgbs) if rgbs else None, q_probs=q_probs, support=support,
        q_values=q_values, trees=trees, predicted_frames=pred, meta=meta, extras=extras,
    )


def load_policy(
    checkpoint: str | os.PathLike[str],
    game: str,
    *,
    planning_horizon: int = 2,
    beam_width: int = 2,
    device: str = "auto",
) -> tuple[InspectablePolicy, dict[str, Any]]:
    """Load a workbench checkpoint (safetensors + JSON) as its algorithm's inspectable policy for
    ``game`` (pickled files are refused by ``checkpoint.resolve_checkpoint``).

    Returns (policy, info) with info ``checkpoint``, ``game_id``, ``algo``, ``model`` and the
    evaluation options.
    """
    algo, run, ckpt = load_algo(checkpoint, device=device)
    trained = list(run.games)
    canon = games.canonical_game(game)
    if canon not in trained:
        raise ValueError(f"{canon} was not trained by {ckpt}; its games are {', '.join(trained)}")
    options = EvalOptions(planning_horizon=int(planning_horizon), beam_width=int(beam_width))
    policy = algo.inspectable_policy(options)
    info = {"checkpoint": str(ckpt), "game_id": trained.index(canon), "algo": run.algo_name, "model": run.model,
            "planning_horizon": options.planning_horizon, "beam_width": options.beam_width}
    return policy, info


def rollout_from_params(params: Any, *, save: bool = True, progress: bool = True) -> Rollout:
    """The explorer notebook's rollout from its ``ExplorerParams``: play a checkpoint, load a
    saved rollout, or make a synthetic one; new rollouts are saved under ``out_dir/rollout``."""
    if params.source == "rollout":
        return Rollout.load(params.rollout_path)
    if params.source == "synthetic":
        rollout = synthetic_rollout(min(params.max_steps, 200), game=params.game, seed=params.seed)
    elif params.source == "checkpoint":
        rollout = play_rollout(params.checkpoint, params.game, seed=params.seed,
                               max_steps=params.max_steps, epsilon=params.epsilon, progress=progress,
                               planning_horizon=params.planning_horizon, beam_width=params.beam_width)
    else:
        raise ValueError(f"unknown source {params.source!r}: valid are 'checkpoint', 'rollout', 'synthetic'")
    if save:
        rollout.save(Path(params.out_dir) / "rollout")
    return rollout


# ---------------------------------------------------------------------- synthetic


def synthetic_rollout(
    steps: int = 24,
    *,
    game: str = "Pong",
    atoms: int = 51,
    v_range: tuple[float, float] = (-10.0, 10.0),
    horizon: int = 2,
    beam: int = 2,
    planner: bool = True,
    rgb: bool = False,
    seed: int = 0,
) -> Rollout:
    """A deterministic random rollout: a bright square moving over noise, random C51
    distributions, and (``planner=True``) full beam-search trees and noisy predicted frames.
    For tests and for the explorer's ``source='synthetic'`` smoke mode; no env or model needed.
    """
    rng = np.random.default_rng(seed)
    names = list(games.action_names(game))
    a = len(names)
    frames = rng.integers(0, 40, size=(steps, 84, 84), dtype=np.uint8)
    for t in range(steps):
        r, c = 10 + (3 * t) % 60, 10 + (5 * t) % 60
        frames[t, r : r + 12, c : c + 12] = 255
    logits = rng.normal(size=(steps, a, atoms)) * 2.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    support = np.linspace(v_range[0], v_range[1], atoms)
    q = probs @ support
    actions = q.argmax(1)
    rewards = np.where(rng.random(steps) < 0.15, rng.choice([-1.0, 1.0], size=steps), 0.0)
    trees: list[dict[str, Any] | None] | None = None
    pred = None
    if planner:
        trees = [_synthetic_tree(rng, a, horizon, beam, int(actions[t])) for t in range(steps)]
        noise = rng.integers(0, 30, size=(steps, horizon, 84, 84))
        pred = np.zeros((steps, horizon, 84, 84), np.uint8)
        for t in range(steps):
            for k in range(horizon):
                nxt = frames[min(t + 1 + k, steps - 1)].astype(np.int64)
                pred[t, k] = np.clip(nxt + noise[t, k], 0, 255).astype(np.uint8)
    rgb_frames = np.repeat(frames[:, :, :, None], 3, axis=3) if rgb else None
    return Rollout(game=games.canonical_game(game), action_names=names, frames=frames,
                   actions=actions, rewards=rewards, rgb_frames=rgb_frames, q_probs=probs,
                   support=support, trees=trees, predicted_frames=pred,
                   meta={"synthetic": True, "seed": seed})


def _synthetic_tree(rng: np.random.Generator, num_actions: int, horizon: int, beam: int,
                    chosen: int) -> dict[str, Any]:
    """A beam search's shape: each kept node expands its top-``beam`` actions; the best
    ``beam`` children of a depth are kept. Values are random; the shape is the planner's."""
    nodes = [dict(id=0, parent=-1, depth=0, action=-1, reward=0.0, q=float(rng.normal()),
                  score=0.0, kept=True, terminal=False)]
    frontier = [0]
    for depth in range(1, horizon + 1):
        children = []
        for pid in frontier:
            acts = rng.choice(num_actions, size=min(beam, num_actions), replace=False)
            if depth == 1 and chosen not in acts:
                acts[0] = chosen
            for act in acts:
                nid = len(nodes)
                r = float(rng.choice([0.0, 0.0, 1.0]))
                qv = float(rng.normal())
                nodes.append(dict(id=nid, parent=pid, depth=depth, action=int(act), reward=r, q=qv,
                                  score=nodes[pid]["score"] + r + qv, kept=False,
                                  terminal=bool(rng.random() < 0.05)))
                children.append(nid)
        best = sorted(children, key=lambda i: -nodes[i]["score"])[:beam]
        for i in best:
            nodes[i]["kept"] = True
        frontier = best
    return {"chosen_action": int(chosen), "nodes": nodes}

"""The CPU-scale studies: data with learning in it, and their results summaries.

Two studies use it: the MinAtar study (``sweeps/minatar_study.yaml``, docs/minatar_study.md: the
suite where the papers' findings can be tested on 2 cores, with observation-dependent scripted
behaviour from ``workbench.data.minatar_scripts``) and the earlier Atari small-scale study
(``sweeps/small_scale_study.yaml``, whose games a frame-blind policy can win). What follows was
written for the Atari one; the MinAtar histories are recorded the same way.

**Why scripted data.** The online C51 agent (``workbench.online``, resnet-tiny) took 28 CPU-s
(111 s wall on a loaded shared machine) for 2,000 agent steps while it trains, about 70 agent
steps per CPU-second. One CPU hour is then about 250k agent steps for all games together, about
60k (250k frames) for each of the study's four: a quarter of the first of Dopamine's 200
one-million-frame iterations, where its C51 curves on Breakout and Pong are still at their start.
So the data here is the issue's fallback, stated as such: **scripted policies (RAM heuristics)
played epsilon-greedily with an epsilon that decays across checkpoints** (geometrically, 1.0 ->
``eps_end``), a quality-improving "learning history" in the DQN-Replay layout. Its first 20% of
checkpoints is the "sub-optimal" split, all of it the "near-optimal" one, as in the papers
(``workbench.data.splits.PRESETS``).

Games, and what each can show at this scale:

* ``Freeway``: the heuristic presses UP. Random play (a third UP) almost never crosses in a capped
  episode, the heuristic crosses about once per 100 agent steps, so every level of epsilon gives a
  different return and a policy that learned "UP more often than the data's average" beats the
  behaviour of the sub-optimal split measurably (the paper's "offline RL improves on its data").
  Unlike the random-behaviour Freeway data of the issue (NOOP most frequent), UP is the most
  frequent action from the second checkpoint on.
* ``SpaceInvaders``: the heuristic fires standing still (285 per capped episode, random about
  140). Like Freeway, a policy that ignores the frame can win it, so it is the second game on
  which "learned anything" is measurable at a few thousand gradient steps.
* ``Breakout``: the heuristic fires and follows the ball with the paddle (tens of points per
  capped episode, random ~1). Its action depends on where a few pixels of ball and paddle are, so
  a method must learn an encoder that sees them.
* ``Pong``: the heuristic follows the ball (about even with the computer in a capped episode;
  random loses about 1 point per 150 steps). Frame-dependent like Breakout, with sparse, delayed
  rewards on top. docs/minatar_study.md says how far the study's methods got on each game.

Episodes of the data are capped at ``episode_cap`` agent steps (the cap ends an episode with a
terminal, as DQN-Replay's 27,000-step limit does), the same cap as the study's evaluation, so the
behaviour line, the random policy and every method are returns over the same episode length.

Files next to the data (a DQN-Replay root ``{Game}/1/replay_logs``): ``behaviour.json``, per game
the behaviour policy's episodes per checkpoint (epsilon, raw returns, their mean), its mean per
split, and the random policy's mean under the evaluation protocol with the same cap.

Command line::

    python -m workbench.study data --output-dir data/small_scale_study [--checkpoints 10 --rows 5000 ...]
    python -m workbench.study summary sweeps/small_scale_study.yaml [--out figures/small_scale_study.json]
    python -m workbench.study actions sweeps/small_scale_study.yaml [--out figures/small_scale_study_actions.json]
    python -m workbench.study all sweeps/minatar_study.yaml --out figures/minatar_study.json \
        --table figures/minatar_study_table.md --actions figures/minatar_study_actions.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workbench import games as G
from workbench import metrics
from workbench.algos.base import algo_label, algo_names, check_policy, get_algo
from workbench.baselines import reference_scores
from workbench.config import PretrainConfig
from workbench.data import dqn_replay as dr
from workbench.data.behaviour import BEHAVIOUR_FILE
from workbench.data.minatar_scripts import RULES as MINATAR_RULES
from workbench.data.record import record
from workbench.data.splits import parse_split
from workbench.diagnostics import DIAGNOSTIC_CURVES
from workbench.envs import FRAME_SKIP, AtariProtocolEnv
from workbench.evaluate import episode_seed, epsilon_greedy
from workbench.fileio import atomic_write_json, atomic_write_text
from workbench.minatar_envs import MinAtarProtocolEnv
from workbench.paths import resolve_path
from workbench.run import Run
from workbench.settings import field_docs
from workbench.sweep import load_sweep, run_sweep, sweep_status
from workbench.viz.rollout import play_rollout

__all__ = ["BEHAVIOUR_FILE", "SCRIPTED_GAMES", "BehaviourFileError", "EpsilonSchedulePolicy", "HistorySpec",
           "ScriptedPolicy", "action_profile", "bootstrap_ci", "build_summary", "epsilon_schedule", "findings", "main",
           "method_label", "read_behaviour", "record_history", "split_checkpoints", "summary_table",
           "sweep_action_profiles"]

ATARI_SCRIPTED_GAMES = ("Breakout", "Freeway", "Pong", "SpaceInvaders")
SCRIPTED_GAMES = (*ATARI_SCRIPTED_GAMES, *G.MINATAR_GAMES)
#: the study's splits: the papers' presets (first 20% of checkpoints; all of them)
SPLITS = ("sub_optimal", "near_optimal")
PADDING_ROWS = 3  # DQN-Replay's padding rows before every episode (workbench.data.record)

RamReader = Callable[[], Any]  # console RAM (Atari) or the MinAtar game object


# ----------------------------------------------------------------------------------------------
# Scripted policies


def _pong(ram: np.ndarray) -> int:
    # RAM 51: the agent's paddle (top), 54: the ball's y. RIGHT (2) moves up, LEFT (3) down;
    # the paddle's centre is about 8 units below its top.
    paddle, ball = int(ram[51]) + 8, int(ram[54])
    if ball > paddle + 2:
        return 3
    if ball < paddle - 2:
        return 2
    return 0


def _breakout(ram: np.ndarray) -> int:
    # RAM 72: paddle x, 99: ball x, 101: ball y (0 while no ball is in play: FIRE launches one).
    paddle, ball_x, ball_y = int(ram[72]) + 8, int(ram[99]), int(ram[101])
    if ball_y == 0:
        return 1
    if ball_x > paddle + 3:
        return 2
    if ball_x < paddle - 3:
        return 3
    return 1


def _freeway(ram: np.ndarray) -> int:
    return 1  # UP: crossing is the only way to score; a hit only pushes the chicken back


def _space_invaders(ram: np.ndarray) -> int:
    # FIRE, standing still. Measured under the evaluation protocol (1,000-step cap): FIRE scores 285
    # against about 140 for random play (32 episodes) and 0 to 270 for every other constant action; sweeping the
    # cannon left and right while firing scored 60 to 210. The game's one scripted policy that
    # needs no RAM map, and the study's second game that a frame-blind policy can win.
    return 1


def _minatar_rule(game: str) -> Callable[[Any], int]:
    """A MinAtar rule (``workbench.data.minatar_scripts``: it reads the game object, returns MinAtar's
    full-set action) as a minimal-set index."""
    rule = MINATAR_RULES[G.minatar_env_name(game)]
    full_to_minimal = {G.MINATAR_ALE_IDS.index(ale): i for i, ale in enumerate(G.minimal_action_set(game))}
    return lambda env: full_to_minimal[rule(env)]


_HEURISTICS: dict[str, Callable[[Any], int]] = {
    "Breakout": _breakout, "Freeway": _freeway, "Pong": _pong, "SpaceInvaders": _space_invaders,
    **{g: _minatar_rule(g) for g in G.MINATAR_GAMES},
}


class ScriptedPolicy:
    """A RAM heuristic for one game, meeting ``workbench.algos.base.Policy`` (batch of one row).

    It reads the console RAM of the environment it plays (``ram()``), not the frames it is
    given: a scripted behaviour policy for data, never a learned agent."""

    def __init__(self, game: str, ram: RamReader) -> None:
        canonical = G.canonical_game(game)
        if canonical not in _HEURISTICS:
            raise ValueError(f"no scripted policy for {canonical}; scripted games: {', '.join(SCRIPTED_GAMES)}")
        self.game, self._ram, self._rule = canonical, ram, _HEURISTICS[canonical]

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        if len(obs) != 1:
            raise ValueError(f"ScriptedPolicy plays one environment (its RAM); got a batch of {len(obs)}")
        return np.array([self._rule(self._ram())], np.int64)

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        pass

    def reset(self, indices: np.ndarray) -> None:
        pass


DECAYS = ("geometric", "linear")


def epsilon_schedule(checkpoints: int, eps_start: float, eps_end: float, decay: str = "linear") -> list[float]:
    """Epsilon of each checkpoint, from ``eps_start`` (checkpoint 0) to ``eps_end`` (the last):
    ``linear``, or ``geometric`` (a constant ratio: the early checkpoints improve fastest, as a
    DQN agent's do, so the first 20% is already above random but far from the end)."""
    if checkpoints < 1:
        raise ValueError(f"checkpoints must be >= 1, got {checkpoints}")
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; valid: {', '.join(DECAYS)}")
    if decay == "geometric" and not (eps_start > 0 and eps_end > 0):
        raise ValueError(f"geometric decay needs eps_start and eps_end > 0, got {eps_start}, {eps_end}; "
                         "use decay='linear' to reach 0")
    if checkpoints == 1:
        return [float(eps_end)]
    t = [k / (checkpoints - 1) for k in range(checkpoints)]
    if decay == "geometric":
        return [float(eps_start * (eps_end / eps_start) ** x) for x in t]
    return [float(eps_start + (eps_end - eps_start) * x) for x in t]


class EpsilonSchedulePolicy:
    """Plays ``inner`` epsilon-greedily with the epsilon of the checkpoint being written, and
    keeps the episodes' raw and clipped returns per checkpoint (the behaviour line).

    The recorder (run with its own epsilon 0) writes a row per step plus
    :data:`PADDING_ROWS` before every episode, and dumps a checkpoint every ``rows_per_checkpoint``
    rows; counting resets (one per episode start) and steps gives the row a step lands on, so the
    checkpoint is exact. Rows past the schedule's end (a last partial checkpoint) keep its last
    epsilon. An episode belongs to the checkpoint its terminal row is in."""

    def __init__(self, inner: Any, n_actions: int, rows_per_checkpoint: int, epsilons: Sequence[float],
                 seed: int) -> None:
        self.inner = check_policy(inner)
        self.n_actions, self.rows_per_checkpoint, self.epsilons = n_actions, rows_per_checkpoint, list(epsilons)
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 15]))
        self.rows = 0  # rows written so far (padding included)
        self._raw = self._clipped = 0.0
        self._started = False
        self.episodes: list[dict[str, Any]] = []  # {checkpoint, return, clipped_return, steps}
        self._steps = 0
        self._pending_row = 0  # the row of the last observed step

    @property
    def checkpoint(self) -> int:
        """The checkpoint the next row goes into."""
        return self.rows // self.rows_per_checkpoint

    def epsilon(self) -> float:
        return self.epsilons[min(self.checkpoint, len(self.epsilons) - 1)]

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        greedy = np.asarray(self.inner.act(obs, game_ids), np.int64)
        explore = self._rng.random(len(greedy)) < self.epsilon()
        random = self._rng.integers(self.n_actions, size=len(greedy))
        return np.where(explore, random, greedy).astype(np.int64)

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.inner.observe(actions, rewards)
        reward = float(np.asarray(rewards)[0])
        self._raw += reward
        self._clipped += float(np.clip(reward, -1.0, 1.0))
        self._steps += 1
        self._pending_row = self.rows  # the row this step is written to
        self.rows += 1

    def reset(self, indices: np.ndarray) -> None:
        self.inner.reset(indices)
        if self._started:  # the previous episode ended on the last observed step
            self.end_episode()
        self._started = True
        self.rows += PADDING_ROWS

    def end_episode(self) -> None:
        """Close the running episode (called by reset, and by the recorder's caller at the end)."""
        if self._steps:
            self.episodes.append({"checkpoint": self._pending_row // self.rows_per_checkpoint, "return": self._raw,
                                  "clipped_return": self._clipped, "steps": self._steps})
        self._raw = self._clipped = 0.0
        self._steps = 0


# ----------------------------------------------------------------------------------------------
# The data


@dataclass(frozen=True)
class HistorySpec:
    """How the learning history of each game is recorded (``python -m workbench.study data``)."""

    output_dir: str = "data/small_scale_study"
    """DQN-Replay root to write {Game}/1/replay_logs and behaviour.json into."""
    games: str = ",".join(ATARI_SCRIPTED_GAMES)
    """Comma-separated games or a game set of one suite, each with a scripted policy: Breakout, Freeway,
    Pong, SpaceInvaders, or MinAtar's five (minatar_5)."""
    checkpoints: int = 10
    """Checkpoints per game (epsilon decays across them); the sub-optimal split is the first 20%."""
    rows: int = 5000
    """Rows per checkpoint (DQN-Replay: 1,000,000)."""
    eps_start: float = 1.0
    """Epsilon of the first checkpoint (1.0: uniform random, as a fresh DQN agent)."""
    eps_end: float = 0.05
    """Epsilon of the last checkpoint."""
    decay: str = "geometric"
    """How epsilon falls across checkpoints: 'geometric' (1.0, 0.72, 0.51, ... for 10 to 0.05) or 'linear'."""
    episode_cap: int = 1000
    """Agent steps per episode before it ends (data, random reference and the sweeps' eval_max_steps)."""
    random_episodes: int = 32
    """Episodes of the random policy (evaluation protocol, same cap) per game; its returns vary a lot
    (SpaceInvaders: 20 to 600), and the summary compares methods with their 95% CI."""
    seed: int = 0
    """Seed of the environments, the exploration and the random reference."""
    eval_noop_starts: int = 0
    """No-op starts of the reference policies' episodes (random, every constant action): set it to
    the sweeps' eval_noop_starts, so the references meet the agents' protocol."""
    eval_behaviour_episodes: int = 4
    """Episodes per checkpoint of the behaviour replayed under the agents' protocol (each
    checkpoint's epsilon, the evaluation env, eval_noop_starts): the behaviour line the summary
    compares with, besides the recorded returns (Atari data is recorded with sticky actions 0.25)."""

    def __post_init__(self) -> None:
        for name in ("checkpoints", "rows", "episode_cap", "random_episodes", "eval_behaviour_episodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.rows < 16:
            raise ValueError(f"rows must be >= 16 (a checkpoint holds whole frame stacks), got {self.rows}")
        for name in ("eps_start", "eps_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        unknown = [g for g in self.game_list if g not in SCRIPTED_GAMES]
        if unknown:
            raise ValueError(f"no scripted policy for {unknown}; scripted games: {', '.join(SCRIPTED_GAMES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        epsilon_schedule(self.checkpoints, self.eps_start, self.eps_end, self.decay)  # bad decay: an error

    @property
    def game_list(self) -> tuple[str, ...]:
        return G.resolve_games(self.games)


def split_checkpoints(split: str, n_checkpoints: int) -> list[int]:
    """The checkpoints of a run of ``n_checkpoints`` that ``split`` (the config grammar) uses."""
    return parse_split(split).choose(list(range(n_checkpoints)))


def _env_with_ram(game: str, seed: int | None, cap: int, protocol: str = "data") -> tuple[Any, RamReader]:
    """``game``'s env under ``protocol`` and a reader of the state its heuristic reads: the console
    RAM of this very environment (Atari), or MinAtar's game object."""
    if G.suite_of(game) == "minatar":
        menv = MinAtarProtocolEnv(game, protocol, seed=seed, max_episode_steps=cap)
        return menv, lambda: menv.env
    env = AtariProtocolEnv(game, protocol, seed=seed, max_episode_frames=cap * FRAME_SKIP)  # type: ignore[arg-type]
    return env, lambda: env._ale.getRAM()


def behaviour_returns(game: str, epsilon: float, *, episodes: int, cap: int, seed: int,
                      noop_starts: int = 0) -> list[float]:
    """Returns of the scripted behaviour played with ``epsilon`` under the agents' evaluation
    protocol (Atari: no sticky actions; MinAtar: its own 0.1), ``noop_starts`` and the cap. Episode
    ``k`` is seeded like the evaluator's (:func:`workbench.evaluate.episode_seed`), and its
    exploration and no-op draws come from that seed's stream."""
    game = G.canonical_game(game)
    env, reader = _env_with_ram(game, None, cap, "eval")  # each episode reseeds it below
    rule, n_actions = _HEURISTICS[game], G.num_actions(game)
    out = []
    for k in range(episodes):
        s = episode_seed(seed, game, k)
        rng = np.random.default_rng(s)
        env.reset(seed=s)
        noops = int(rng.integers(noop_starts + 1)) if noop_starts else 0
        total, done = 0.0, False
        while not done:
            action = 0 if noops > 0 else epsilon_greedy(rng, rule(reader()), n_actions, epsilon)
            noops -= 1
            _, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        out.append(total)
    return out


def record_history(spec: HistorySpec, *, progress: bool = True) -> dict[str, Any]:
    """Record every game's learning history and write ``behaviour.json``; returns its content."""
    root = resolve_path(spec.output_dir)
    epsilons = epsilon_schedule(spec.checkpoints, spec.eps_start, spec.eps_end, spec.decay)
    # Agent steps that fill the checkpoints (padding rows take the rest; a short last checkpoint may follow).
    steps = spec.checkpoints * spec.rows
    per_game: dict[str, Any] = {}
    for i, game in enumerate(spec.game_list):
        env, ram = _env_with_ram(game, spec.seed + i, spec.episode_cap)
        behaviour = EpsilonSchedulePolicy(ScriptedPolicy(game, ram), G.num_actions(game), spec.rows, epsilons,
                                          seed=spec.seed + i)
        def same_env(_game: str, _seed: int, env: Any = env) -> Any:
            return env  # the policy reads this env's RAM; record() resets it with its seed

        out = record(game, steps, root, policy=behaviour, epsilon=0.0, seed=spec.seed + i, capacity=spec.rows,
                     game_id=0, progress=progress, env_factory=same_env)
        behaviour.end_episode()
        info = json.loads((out / "record_info.json").read_text())
        # Episodes that ended (a last one cut by the end of the recording is not a return).
        complete = behaviour.episodes[: int(info["episodes"])]
        n_ckpts = _trim_partial(out, info, spec.checkpoints)
        rows_ck = []
        for k in range(n_ckpts):
            eps = [e for e in complete if e["checkpoint"] == k]
            rows_ck.append({"checkpoint": k, "epsilon": epsilons[min(k, len(epsilons) - 1)], "episodes": len(eps),
                            "returns": [e["return"] for e in eps],
                            "clipped_returns": [e["clipped_return"] for e in eps],
                            "mean_return": float(np.mean([e["return"] for e in eps])) if eps else None})
        splits = {}
        for split in SPLITS:
            chosen = set(split_checkpoints(split, n_ckpts))
            rets = [e["return"] for e in complete if e["checkpoint"] in chosen]
            splits[split] = float(np.mean(rets)) if rets else None
        per_game[game] = {"replay_logs": str(out.relative_to(root)), "checkpoints": rows_ck, "splits": splits,
                          "episodes": len(complete), "agent_steps": steps}
    # Random and every constant action under the agents' evaluation protocol (same cap, episodes).
    refs = reference_scores(spec.game_list, episodes=spec.random_episodes, max_agent_steps=spec.episode_cap,
                            seed=spec.seed, noop_starts=spec.eval_noop_starts, progress=progress)
    random = {g: refs[g]["random"]["scores"] for g in spec.game_list}
    doc = {
        "games": list(spec.game_list), "spec": {k: getattr(spec, k) for k in HistorySpec.__dataclass_fields__},
        "epsilons": epsilons, "behaviour_policy": "scripted RAM heuristic, epsilon-greedy (decaying per checkpoint)",
        "protocol": "data protocol (sticky actions 0.25), episodes capped at episode_cap agent steps",
        "per_game": per_game,
        "behaviour": {split: {g: per_game[g]["splits"][split] for g in spec.game_list} for split in SPLITS},
        "random": {g: float(np.mean(r)) for g, r in random.items()},
        "random_returns": random,
        "random_protocol": "uniform random policy, evaluation protocol, same cap",
        "constant": {g: {a: c["mean"] for a, c in refs[g]["constant"].items()} for g in spec.game_list},
        "constant_best": {g: refs[g]["constant_best"] for g in spec.game_list},
        "constant_protocol": "each minimal-set action held constant (evaluator epsilon 0.001), evaluation protocol, "
                             "same cap and episodes as random",
        "behaviour_protocol": ("the data protocol: for MinAtar games the same env as the agents' evaluation "
                               "(sticky actions 0.1 in both), the behaviour's own epsilon; for Atari games sticky "
                               "actions 0.25, which the agents' evaluation does not have"),
    }
    doc["behaviour_eval_protocol"] = behaviour_under_protocol(doc, episodes=spec.eval_behaviour_episodes,
                                                               noop_starts=spec.eval_noop_starts, seed=spec.seed)
    atomic_write_json(root / BEHAVIOUR_FILE, doc)
    return doc


def behaviour_under_protocol(doc: dict[str, Any], *, episodes: int, noop_starts: int, seed: int) -> dict[str, Any]:
    """Per split and game, the mean return of the scripted behaviour replayed under the agents'
    evaluation protocol with each of the split's checkpoints' epsilon (``episodes`` each)."""
    out: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
    cap = int(doc["spec"]["episode_cap"])
    for game in doc["games"]:
        checkpoints = doc["per_game"][game]["checkpoints"]
        returns = {c["checkpoint"]: behaviour_returns(game, c["epsilon"], episodes=episodes, cap=cap,
                                                      seed=seed + c["checkpoint"], noop_starts=noop_starts)
                   for c in checkpoints}
        for split in SPLITS:
            chosen = split_checkpoints(split, len(checkpoints))
            out[split][game] = float(np.mean([r for k in chosen for r in returns[k]]))
    return out


def _trim_partial(replay_logs: Path, info: dict[str, Any], checkpoints: int) -> int:
    """Drop the short checkpoint the padding rows spill past the last full one (so the run has
    exactly ``checkpoints`` checkpoints and the 20% split is exact); returns the count kept."""
    for k in dr.list_checkpoints(replay_logs):
        if k >= checkpoints:
            for f in replay_logs.glob(f"*_ckpt.{k}.gz"):
                f.unlink()
    kept = len(dr.list_checkpoints(replay_logs))
    if kept != info["checkpoints"]:
        atomic_write_json(replay_logs / "record_info.json",
                          {**info, "checkpoints": kept,
                           "trimmed": f"checkpoints >= {checkpoints} removed (a short tail)"}, indent=1)
    return kept


# ----------------------------------------------------------------------------------------------
# The results summary


class BehaviourFileError(ValueError):
    """A ``behaviour.json`` that is not what ``record_history`` writes (the message names the file
    and what is wrong); the command line prints it on one line and exits 2."""


def _is_score(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def _check_scores(path: Path, key: str, value: Any, games: Sequence[str], *, nullable: bool = False,
                  every_game: bool = True) -> None:
    """``value`` must map games to numbers (or null where ``nullable``), every one of ``games`` present."""
    if not isinstance(value, dict):
        raise BehaviourFileError(f"{path}: {key!r} must be an object {{game: number}}, got {type(value).__name__}")
    for game in games if every_game else []:
        if game not in value:
            raise BehaviourFileError(f"{path}: {key!r} has no entry for {game!r} (a game of its 'games')")
    for game, x in value.items():
        if not (_is_score(x) or (nullable and x is None)):
            what = "a finite number or null" if nullable else "a finite number"
            raise BehaviourFileError(f"{path}: {key}[{game!r}] must be {what}, got {x!r}")


def read_behaviour(path: str | os.PathLike[str], *, for_replay: bool = False) -> dict[str, Any]:
    """``behaviour.json`` as ``record_history`` writes it, checked before anything reads it: a file
    that is not JSON, not an object, lacks a key the summary reads or holds a wrong type raises
    :class:`BehaviourFileError` naming the file and the entry. ``for_replay`` also checks what
    ``behaviour_under_protocol`` reads (``spec`` and each game's checkpoints)."""
    bpath = Path(path)
    if not bpath.is_file():
        raise FileNotFoundError(f"{bpath} does not exist: record the data first (python -m workbench.study data)")
    try:
        doc = json.loads(bpath.read_text())
    except UnicodeDecodeError as exc:
        raise BehaviourFileError(f"{bpath}: not a text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise BehaviourFileError(f"{bpath}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                                 ) from None
    if not isinstance(doc, dict):
        raise BehaviourFileError(f"{bpath}: must be a JSON object, got {type(doc).__name__}")
    for key in ("games", "random", "behaviour"):
        if key not in doc:
            raise BehaviourFileError(f"{bpath}: missing key {key!r} (record the data with "
                                     "python -m workbench.study data)")
    games = doc["games"]
    if not isinstance(games, list) or not games or not all(isinstance(g, str) and g for g in games):
        raise BehaviourFileError(f"{bpath}: 'games' must be a non-empty list of game names, got {games!r}")
    _check_scores(bpath, "random", doc["random"], games)
    behaviour = doc["behaviour"]
    if not isinstance(behaviour, dict):
        raise BehaviourFileError(f"{bpath}: 'behaviour' must be an object {{split: {{game: number}}}}, "
                                 f"got {type(behaviour).__name__}")
    for split in SPLITS:
        if split not in behaviour:
            raise BehaviourFileError(f"{bpath}: 'behaviour' has no {split!r} split")
    for split, per in behaviour.items():
        _check_scores(bpath, f"behaviour[{split!r}]", per, games, nullable=True, every_game=False)
    if "random_returns" in doc:
        returns = doc["random_returns"]
        if not isinstance(returns, dict):
            raise BehaviourFileError(f"{bpath}: 'random_returns' must be an object {{game: [returns]}}")
        for game, runs in returns.items():
            if not isinstance(runs, list) or not runs or not all(_is_score(x) for x in runs):
                raise BehaviourFileError(f"{bpath}: random_returns[{game!r}] must be a non-empty list of finite "
                                         f"numbers, got {runs!r}")
    if "constant_best" in doc:
        best = doc["constant_best"]
        if not isinstance(best, dict):
            raise BehaviourFileError(f"{bpath}: 'constant_best' must be an object {{game: {{action, mean, scores}}}}")
        for game, c in best.items():
            if (not isinstance(c, dict) or not isinstance(c.get("action"), str) or not _is_score(c.get("mean"))
                    or not isinstance(c.get("scores"), list) or not c["scores"]
                    or not all(_is_score(x) for x in c["scores"])):
                raise BehaviourFileError(f"{bpath}: constant_best[{game!r}] must be {{'action': name, 'mean': number, "
                                         f"'scores': [numbers]}}, got {c!r}")
    if "behaviour_eval_protocol" in doc:
        replayed = doc["behaviour_eval_protocol"]
        if not isinstance(replayed, dict):
            raise BehaviourFileError(f"{bpath}: 'behaviour_eval_protocol' must be an object "
                                     "{split: {game: number}}")
        for split, per in replayed.items():
            _check_scores(bpath, f"behaviour_eval_protocol[{split!r}]", per, games, nullable=True, every_game=False)
    if for_replay:
        spec, per_game = doc.get("spec"), doc.get("per_game")
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool)
                                                 for k in ("episode_cap", "seed")):
            raise BehaviourFileError(f"{bpath}: 'spec' must be an object with integer 'episode_cap' and 'seed'")
        if not isinstance(per_game, dict):
            raise BehaviourFileError(f"{bpath}: 'per_game' must be an object {{game: {{checkpoints: [...]}}}}")
        for game in games:
            ckpts = (per_game.get(game) or {}).get("checkpoints") if isinstance(per_game.get(game), dict) else None
            if not isinstance(ckpts, list) or not ckpts or not all(
                    isinstance(c, dict) and isinstance(c.get("checkpoint"), int) and _is_score(c.get("epsilon"))
                    for c in ckpts):
                raise BehaviourFileError(f"{bpath}: per_game[{game!r}]['checkpoints'] must be a non-empty list of "
                                         "{'checkpoint': int, 'epsilon': number}")
    return doc


def bootstrap_ci(values: Sequence[float], *, reps: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over runs (resampled with replacement)."""
    x = np.asarray(values, float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def reference_models(sweeps: Sequence[Any]) -> dict[str, str]:
    """Each algorithm's model in the study's baseline points: the model most of its points use
    (another model is then named in a method's label). Algorithms absent from the sweeps keep
    their default model."""
    counts: dict[str, dict[str, int]] = {}
    for sweep in sweeps:
        for point in sweep.points:
            algo, model = point.params.get("algo"), point.params.get("model")
            if algo and model:
                per = counts.setdefault(algo, {})
                per[model] = per.get(model, 0) + 1
    defaults = {name: get_algo(name).default_model() for name in algo_names()}
    return {**defaults, **{a: max(per, key=lambda m: per[m]) for a, per in counts.items()}}


def method_label(params: dict[str, Any], reference_model: dict[str, str]) -> str:
    """The method a run stands for: its algorithm, plus what differs from the study's baseline
    (feature normalization off, another model than the algorithm's reference size)."""
    config = PretrainConfig.from_params(**params)
    label = algo_label(config.algo_name)
    if getattr(config.settings, "feature_norm", True) is False:
        label += " (no feature norm)"
    ref = reference_model.get(config.algo_name)
    if ref is not None and config.model != ref:
        label += f" [{config.model}]"
    return label


def _finished_points(sweeps: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(sweep, point) for every finished point of the sweeps, each run folder once (two sweeps may
    share a point)."""
    out, seen = [], set()
    for sweep in sweeps:
        states = {p["id"]: p["state"] for p in sweep_status(sweep, write=False)["points"]}
        for point in sweep.points:
            if states[point.id] == "done" and str(point.run_dir) not in seen:
                seen.add(str(point.run_dir))
                out.append((sweep, point))
    return out


def _point_seconds(status_file: Path) -> float:
    """A finished point's wall seconds, as its status file records them (``workbench.sweep.run_point``)."""
    return float(json.loads(status_file.read_text()).get("seconds", 0.0))


def _row_key(point: Any, reference_model: dict[str, str]) -> tuple[str, str]:
    """The (method, split) a point's runs are grouped under in the summary and the action profiles."""
    return method_label(point.params, reference_model), str(point.params.get("split", "all"))


def _behaviour_scale_protocol(game: str) -> str:
    """Whether the behaviour line (the 1 of the behaviour-normalized scale) was measured under the
    agents' evaluation protocol."""
    if G.suite_of(game) == "minatar":
        return "same protocol: the data env is the agents' evaluation env (MinAtar, sticky actions 0.1 in both)"
    return ("mixed protocols: the behaviour line is the recorded data's return, with sticky actions 0.25 (the data "
            "protocol); random and the agents are evaluated without sticky actions")


#: What every number of the summary is (``build_summary``'s ``definitions``; docs/minatar_study.md says the same).
DEFINITIONS: dict[str, str] = {
    "runs": "a run is one seed of a (method, split) point: its mean evaluation return over its episodes on that game "
            "('runs'); evaluation episodes are never runs (under the agents' protocol one policy's episodes are "
            "near-duplicates, so an interval over them would measure nothing)",
    "ci": "per (method, split, game) row, the interval of the mean over its runs; 'interval' says which: 'ci' = 95% "
          "percentile bootstrap over the runs (workbench.metrics.interval_over_runs, 4 or more runs), 'range' = the "
          "runs' minimum to maximum (2 or 3 runs: a 95% percentile bootstrap of so few is exactly that), 'none' = one "
          "run, no interval (ci null; above_random and the beats_* flags null: nothing is judged). 'n_runs' counts "
          "the runs",
    "random": "mean return of the uniform random policy under the agents' evaluation protocol and cap",
    "random_ci": "95% percentile bootstrap of the random policy's mean over its evaluation episodes (a random "
                 "policy's episodes are independent draws); absent where the data kept only the mean",
    "constant_best": "the best single action held for a whole episode, same protocol, episodes and cap as random; its "
                     "'ci' is a bootstrap over those episodes, which under a deterministic protocol are "
                     "near-duplicates: nothing is judged by it",
    "behaviour": "the behaviour policy's mean return over the recorded episodes of the split's checkpoints (the "
                 "data protocol: see behaviour_scale_protocol)",
    "behaviour_eval_protocol": "the behaviour replayed under the agents' protocol at each checkpoint's epsilon, "
                               "weighted by checkpoint",
    "above_random": "the row's interval lies above random's interval (above random's mean where the data kept no "
                    "episodes); null without an interval",
    "beats_constant": "the row's interval lies above the best constant action's mean; null without an interval",
    "beats_behaviour": "the row's interval lies above its own split's behaviour mean; null without an interval",
    "beats_sub_optimal_behaviour": "the row's interval lies above the sub-optimal split's behaviour mean; null "
                                   "without an interval",
    "aggregate": "IQM over runs x games of behaviour-normalized scores, (score - random) / (near-optimal behaviour - "
                 "random): 0 = random, 1 = the near-optimal split's behaviour line; its 'ci' is rliable's "
                 "stratified-bootstrap 95% CI (runs resampled within each game, workbench.metrics.aggregate) over "
                 "'num_games' games x 'num_runs' runs each, none with 1 run. Capped returns: not comparable with the "
                 "papers' numbers",
    "behaviour_scale_protocol": "per game, whether the behaviour line (the scale's 1) shares the agents' evaluation "
                                "protocol; where it does not, the normalized score compares returns under two "
                                "protocols",
    "findings": "sentences generated from the rows by workbench.study.findings; every claim in them is a count of "
                "rows, so they cannot contradict the rows",
}


def build_summary(sweep_files: Sequence[str | os.PathLike[str]], *, behaviour: str | os.PathLike[str] | None = None,
                  reps: int = 2000, seed: int = 0,
                  reference_model: dict[str, str] | None = None) -> dict[str, Any]:
    """The study's summary from its sweeps' finished points (``figures/<sweep name>.json``).

    Per (method, split, game): ``runs`` = each seed's mean evaluation return, ``mean`` their mean,
    ``ci`` their interval (:func:`workbench.metrics.interval_over_runs` with ``seed``: a 95%
    bootstrap CI from 4 runs, the range for 2-3, none for 1; ``interval`` names it, ``n_runs``
    counts the runs). Aggregate rows (``game: "aggregate"``) give the IQM of behaviour-normalized
    scores (0 = random, 1 = the near-optimal behaviour) with stratified-bootstrap CIs
    (``workbench.metrics.aggregate``). ``definitions`` says what every number is, ``findings`` are
    sentences derived from the rows (:func:`findings`). ``behaviour`` and ``random`` come from the
    data's ``behaviour.json`` (default: next to the first sweep's ``dataset``), checked by
    :func:`read_behaviour`."""
    if not sweep_files:
        raise ValueError("give at least one sweep file")
    sweeps = [load_sweep(f) for f in sweep_files]
    ref_model = reference_model or reference_models(sweeps)
    if behaviour is None:
        dataset = sweeps[0].base.get("dataset")
        if not dataset:
            raise ValueError(f"sweep {sweeps[0].name} has no base dataset; give behaviour= (its behaviour.json)")
        behaviour = Path(resolve_path(dataset)) / BEHAVIOUR_FILE
    bdoc = read_behaviour(behaviour)
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    counted = {sweep.name: 0 for sweep in sweeps}
    point_seconds = {sweep.name: 0.0 for sweep in sweeps}
    for sweep, point in _finished_points(sweeps):
        point_seconds[sweep.name] += _point_seconds(sweep.status_path(point))
        scores = json.loads((Run(point.run_dir).path / "eval" / "scores.json").read_text())
        for game, entry in scores["per_game"].items():
            groups.setdefault(_row_key(point, ref_model), {}).setdefault(game, []).append(float(entry["mean"]))
        counted[sweep.name] += 1
    games = list(bdoc["games"])
    # The random policy's CI where its episodes were kept (older behaviour files have only the mean):
    # a method is "above random" when its interval lies above random's.
    random_ci = {g: list(bootstrap_ci(r, reps=reps, seed=seed)) for g, r in bdoc.get("random_returns", {}).items()}
    # The best constant action under the same protocol (behaviour files from before it have none).
    constant_best = {g: {"action": c["action"], "mean": c["mean"], "ci": list(bootstrap_ci(c["scores"], reps=reps,
                                                                                         seed=seed))}
                     for g, c in bdoc.get("constant_best", {}).items()}
    baselines = {g: {"random": bdoc["random"][g], "random_ci": random_ci.get(g), "constant_best": constant_best.get(g),
                     "behaviour": {split: bdoc["behaviour"].get(split, {}).get(g) for split in SPLITS},
                     # replayed under the agents' protocol (absent in behaviour files from before it)
                     "behaviour_eval_protocol": {split: per.get(g) for split, per in
                                                 bdoc.get("behaviour_eval_protocol", {}).items()} or None}
                 for g in bdoc["games"]}
    results: list[dict[str, Any]] = []
    for (method, split), per_game in sorted(groups.items()):
        for game in games:
            runs = per_game.get(game)
            if not runs:
                continue
            iv = metrics.interval_over_runs(runs, reps=reps, seed=seed)
            lo = iv["lo"]
            random_top = random_ci[game][1] if game in random_ci else bdoc["random"][game]
            behaviour_mean = bdoc["behaviour"].get(split, {}).get(game)
            sub_behaviour = bdoc["behaviour"].get("sub_optimal", {}).get(game)
            constant = constant_best.get(game)

            def above(line: float | None, lo: float | None = lo) -> bool | None:
                # the row's interval lies above the line: its lower end beats the line's value
                return None if line is None or lo is None else bool(lo > line)

            results.append({"method": method, "split": split, "game": game, "mean": float(np.mean(runs)),
                            "ci": None if lo is None else [lo, iv["hi"]], "interval": iv["kind"],
                            "interval_text": iv["text"], "n_runs": len(runs), "runs": runs,
                            "above_random": above(random_top),
                            "beats_constant": above(None if constant is None else constant["mean"]),
                            "beats_behaviour": above(behaviour_mean),
                            # the bar: above the sub-optimal behaviour, whatever the row's split
                            "beats_sub_optimal_behaviour": above(sub_behaviour),
                            "vs_behaviour": _minus(float(np.mean(runs)), behaviour_mean)})
    # Aggregates over games on the study's own scale: 0 = the random policy, 1 = the behaviour of
    # the whole history (near-optimal split), both measured with the same cap. (Human-normalized
    # capped returns would mislead: a capped Pong episode cannot lose 21 points.)
    scale = {g: (bdoc["random"][g], bdoc["behaviour"]["near_optimal"].get(g)) for g in games}
    usable = [g for g in games if scale[g][1] is not None and scale[g][1] != scale[g][0]]
    aggregates = []
    for (method, split), per_game in sorted(groups.items()):
        common = {g: (np.asarray(per_game[g]) - scale[g][0]) / (scale[g][1] - scale[g][0])
                  for g in usable if g in per_game}
        if not common:
            continue
        agg = metrics.aggregate({"m": common}, "none", reps=reps, seed=seed)["m"]
        n, k = agg["num_runs"], agg["num_games"]
        aggregates.append({"method": method, "split": split, "game": "aggregate",
                           "metric": "iqm_behaviour_normalized", "mean": agg["iqm"],
                           "ci": agg["iqm_ci"] if n >= 2 else None,
                           "interval": (f"95% CI, stratified bootstrap (rliable) over {k} games x {n} runs" if n >= 2
                                        else f"no interval: 1 run per game ({k} games)"),
                           "num_games": k, "num_runs": n, "games": sorted(common),
                           "scale_protocol": sorted({_behaviour_scale_protocol(g).split(":")[0] for g in common})})
    summary = {
        "games": games, "baselines": baselines,
        "random": bdoc["random"], "random_ci": random_ci, "behaviour": bdoc["behaviour"],
        "results": results,
        "aggregates": aggregates,
        "sweeps": {s.name: {"file": str(s.file) if s.file else None, "points_done": counted[s.name],
                            "points": len(s.points),
                            # wall time of the finished points, each one process (training, evaluation, start-up)
                            "point_seconds": round(point_seconds[s.name], 1),
                            "steps_per_point": sorted({int(p.params["steps"]) for p in s.points})} for s in sweeps},
        "definitions": dict(DEFINITIONS),
        "behaviour_scale_protocol": {g: _behaviour_scale_protocol(g) for g in games},
        "notes": ("raw returns of episodes capped at the data's episode_cap agent steps, not comparable with the "
                  "papers' numbers; every interval and normalization is defined in 'definitions'"),
        "bootstrap": {"reps": reps, "seed": seed},
    }
    summary["findings"] = findings(summary)
    return summary


def _interval_words(row: dict[str, Any]) -> str:
    """A row's interval as the findings write it: ``[lo, hi]`` with what it is and how many runs."""
    ci, n = row.get("ci"), row.get("n_runs", len(row.get("runs", [])))
    if ci is None:
        return f"no interval ({n} run)"
    kind = {"range": f"range of {n} runs", "ci": f"95% CI over {n} runs"}.get(str(row.get("interval")), "95% CI")
    return f"[{ci[0]:.4g}, {ci[1]:.4g}] ({kind})"


def findings(summary: dict[str, Any]) -> list[str]:
    """Sentences about the summary's rows, derived from their flags: per game, how many (method,
    split) rows lie above random's interval, the best constant action and the sub-optimal behaviour,
    naming the rows that do not (and those with no interval). A sentence says "every row" only when
    no row falls short, so it cannot contradict the rows."""
    checks = (("above_random", "random's interval"), ("beats_constant", "the best constant action's mean"),
              ("beats_sub_optimal_behaviour", "the sub-optimal behaviour's mean"))
    out: list[str] = []
    for game in summary["games"]:
        rows = [r for r in summary["results"] if r["game"] == game]
        if not rows:
            continue
        base = summary.get("baselines", {}).get(game) or {}
        present = {"above_random": True, "beats_constant": base.get("constant_best") is not None,
                   "beats_sub_optimal_behaviour": summary["behaviour"].get("sub_optimal", {}).get(game) is not None}
        for key, line in checks:
            if not present[key]:
                continue  # the data has no such line for this game
            known = [r for r in rows if r.get(key) is not None]
            unjudged = [r for r in rows if r.get(key) is None]
            yes = [r for r in known if r[key]]
            no = [r for r in known if not r[key]]
            if not known:
                text = f"{game}: no row has an interval to compare with {line}"
            elif not no:
                text = (f"{game}: every row with an interval ({len(yes)} of {len(rows)}) lies above {line}"
                        if unjudged else f"{game}: every row's interval ({len(yes)} rows) lies above {line}")
            elif not yes:
                text = f"{game}: no row's interval lies above {line} (0 of {len(known)})"
            else:
                text = f"{game}: {len(yes)} of {len(known)} rows' intervals lie above {line}"
            if no and yes:
                text += "; not: " + "; ".join(f"{r['method']}, {r['split']} {_interval_words(r)}" for r in no)
            if unjudged:
                text += "; no interval (1 run): " + "; ".join(f"{r['method']}, {r['split']}" for r in unjudged)
            out.append(text + ".")
    return out


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: one row per (method, split), one column per game (mean and
    its interval: ``[lo, hi]`` a 95% CI, ``(range lo to hi)`` the range of 2-3 runs, ``(1 run)`` no
    interval; ``*`` where the interval lies above random's), then the aggregate; random and behaviour
    rows first. Summaries that record runs per row get a "runs (interval)" column, and the
    summary's ``findings`` follow the table."""
    games = list(summary["games"])

    def fmt(x: float) -> str:
        return f"{x:.1f}" if abs(x) < 1000 else f"{x:.0f}"

    with_runs = any("n_runs" in r for r in summary["results"])
    head = ["method", "split", *games, "IQM, behaviour-normalized", "beats constant", "beats behaviour",
            "beats sub-optimal behaviour"] + (["runs (interval)"] if with_runs else [])
    pad = " |" if with_runs else ""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rand_ci = summary.get("random_ci", {})
    lines.append("| random | | " + " | ".join(
        fmt(summary["random"][g]) + (f" [{fmt(rand_ci[g][0])}, {fmt(rand_ci[g][1])}]" if g in rand_ci else "")
        for g in games) + " | 0 | | | |" + pad)
    best = {g: (summary.get("baselines", {}).get(g) or {}).get("constant_best") for g in games}
    if any(best.values()):
        lines.append("| best constant action | | " + " | ".join(
            "" if (c := best[g]) is None else f"{fmt(c['mean'])} ({c['action']})" for g in games) + " | | | | |" + pad)
    for split, per_game in summary["behaviour"].items():
        cells = [fmt(per_game[g]) if per_game.get(g) is not None else "" for g in games]
        scale = " | 1 | | | |" if split == "near_optimal" else " | | | | |"  # the aggregate's 1: near-optimal behaviour
        lines.append(f"| behaviour | {split} | " + " | ".join(cells) + scale + pad)
    rows = {(r["method"], r["split"], r["game"]): r for r in summary["results"]}
    aggs = {(a["method"], a["split"]): a for a in summary.get("aggregates", [])}

    def cell(r: dict[str, Any]) -> str:
        ci, kind = r.get("ci"), r.get("interval", "ci")
        if ci is None:
            text = f"{fmt(r['mean'])} (1 run)"
        elif kind == "range":
            text = f"{fmt(r['mean'])} (range {fmt(ci[0])} to {fmt(ci[1])})"
        else:
            text = f"{fmt(r['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}]"
        return text + ("*" if r.get("above_random") else "")

    for method, split in dict.fromkeys((r["method"], r["split"]) for r in summary["results"]):
        cells = []
        for g in games:
            r = rows.get((method, split, g))
            cells.append("" if r is None else cell(r))
        a = aggs.get((method, split))
        cells.append("" if a is None else f"{a['mean']:.2f} (no interval)" if a.get("ci") is None
                     else f"{a['mean']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]")
        mine = [rows[(method, split, g)] for g in games if (method, split, g) in rows]
        for key in ("beats_constant", "beats_behaviour", "beats_sub_optimal_behaviour"):
            known = [r for r in mine if r.get(key) is not None]
            cells.append(f"{sum(bool(r[key]) for r in known)} of {len(known)}" if known else "")
        if with_runs:
            counts = sorted({int(r.get("n_runs", 0)) for r in mine})
            kinds = sorted({str(r.get("interval")) for r in mine})
            names = {"ci": "95% CI", "range": "range", "none": "no interval"}
            cells.append(("/".join(str(c) for c in counts)) + " (" + ", ".join(names.get(k, k) for k in kinds) + ")")
        lines.append(f"| {method} | {split} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if summary.get("findings"):
        text += "\n" + "\n".join(f"- {f}" for f in summary["findings"]) + "\n"
    return text


def action_profile(source: Any, game: str, *, seeds: Sequence[int] = (0,), max_steps: int = 500,
                   epsilon: float = 0.0) -> dict[str, Any]:
    """How concentrated a policy's actions are: the share of its steps that take its most frequent
    action, over greedy episodes (``workbench.viz.rollout.play_rollout``; ``source`` a checkpoint or
    run folder, or a policy object). 1.0 means one action whatever the screen shows (frame-blind);
    lower means it varies its action, with the frame or with its own history.

    Returns ``modal_action`` (its name), ``modal_fraction``, ``actions_used`` and ``steps``."""
    counts = np.zeros(G.num_actions(game), np.int64)
    names: list[str] = []
    for seed in seeds:
        r = play_rollout(source, game, seed=int(seed), max_steps=max_steps, epsilon=epsilon, render_rgb=False,
                         progress=False)
        counts += np.bincount(r.actions, minlength=counts.size)
        names = r.action_names
    modal = int(np.argmax(counts))
    return {"modal_action": names[modal], "modal_fraction": float(counts[modal] / counts.sum()),
            "actions_used": int((counts > 0).sum()), "steps": int(counts.sum())}


def sweep_action_profiles(sweep_files: Sequence[str | os.PathLike[str]], *, max_steps: int = 500,
                          reference_model: dict[str, str] | None = None,
                          progress: bool = True) -> dict[str, Any]:
    """``action_profile`` of every finished point of the sweeps, per game, grouped like the summary's
    rows: per (method, split, game) the modal fraction of each run (seed) and their modal actions."""
    sweeps = [load_sweep(f) for f in sweep_files]
    ref_model = reference_model or reference_models(sweeps)
    jobs = [point for _, point in _finished_points(sweeps)]
    rows: dict[tuple[str, str, str], dict[str, list[Any]]] = {}
    for point in tqdm(jobs, desc="action profiles", disable=not progress):
        run = Run(point.run_dir)
        for game in run.games:
            prof = action_profile(run.path, game, max_steps=max_steps)
            row = rows.setdefault((*_row_key(point, ref_model), game), {"modal_fraction": [], "modal_action": []})
            row["modal_fraction"].append(prof["modal_fraction"])
            row["modal_action"].append(prof["modal_action"])
    return {"max_steps": max_steps, "epsilon": 0.0,
            "rows": [{"method": m, "split": s, "game": g, **v} for (m, s, g), v in sorted(rows.items())],
            "notes": "share of greedy steps (one episode per run, seed 0) that take the run's most frequent action"}


def run_study(sweep_file: str | os.PathLike[str], *, out: str | os.PathLike[str], table: str | None = None,
              actions: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole study from one sweep file: its data (the sweep's ``games`` and ``dataset``, recorded
    with :class:`HistorySpec`'s defaults unless the dataset's behaviour.json exists), every point
    (done points are skipped, interrupted ones resume), then the summary (and table, action profiles)."""
    sweep = load_sweep(sweep_file)
    dataset, games = sweep.base.get("dataset"), sweep.base.get("games")
    if not dataset or not games:
        raise ValueError(f"sweep {sweep.name} needs a base dataset and games to record the study's data")
    if not (Path(resolve_path(dataset)) / BEHAVIOUR_FILE).is_file():
        record_history(HistorySpec(output_dir=str(dataset), games=str(games)), progress=progress)
    index = run_sweep(sweep, progress=progress)
    failed = [p["id"] for p in index["points"] if p["state"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} points did not finish (python -m workbench.sweep status {sweep_file}): "
                           f"{', '.join(failed[:3])}")
    summary = build_summary([sweep_file])
    atomic_write_json(resolve_path(out), summary)
    if table:
        atomic_write_text(resolve_path(table), summary_table(summary))
    if actions:
        atomic_write_json(resolve_path(actions), sweep_action_profiles([sweep_file], progress=progress))
    return summary


def sweep_curves(sweep_file: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 png: bool = True) -> dict[str, Any]:
    """Learning curves and representation diagnostics of every finished point, one line per run,
    one figure per (method, split): ``<out_dir>/curves_<method>_<split>`` and
    ``representation_<method>_<split>`` (HTML, and PNG where a Chromium is present)."""
    from workbench.viz.analysis import curve_names  # noqa: PLC0415  (plotly, an optional extra)
    from workbench.viz.export import save_figure  # noqa: PLC0415  (plotly, an optional extra)
    from workbench.viz.results_figures import make_learning_curve_figure  # noqa: PLC0415  (plotly, an optional extra)

    sweeps = [load_sweep(sweep_file)]
    ref_model = reference_models(sweeps)
    groups: dict[tuple[str, str], dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str]]] = {}
    for _, point in _finished_points(sweeps):
        run = Run(point.run_dir)
        metrics_records, _ = run.all_metrics()
        diagnostics, _ = run.all_metrics("diagnostics.jsonl")
        groups.setdefault(_row_key(point, ref_model), {})[f"seed {point.params['seed']}"] = (
            metrics_records, diagnostics, run.algo_name)
    out = resolve_path(out_dir)
    written: dict[str, Any] = {}
    for (method, split), runs in sorted(groups.items()):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{method}_{split}").strip("_").lower()
        algo = next(iter(runs.values()))[2]
        keys = {k for records, _, _ in runs.values() for r in records for k in r}
        names = curve_names(algo, keys) or ["loss"]
        fig = make_learning_curve_figure({seed: records for seed, (records, _, _) in runs.items()}, names,
                                         title=f"{method}, {split}: training")
        save_figure(fig.update_layout(height=200 * len(names) + 140, width=900), out / f"curves_{slug}", png=png)
        written[f"curves_{slug}"] = names
        if any(diag for _, diag, _ in runs.values()):
            fig = make_learning_curve_figure({seed: diag for seed, (_, diag, _) in runs.items() if diag},
                                             list(DIAGNOSTIC_CURVES), title=f"{method}, {split}: representation")
            save_figure(fig.update_layout(height=200 * len(DIAGNOSTIC_CURVES) + 140, width=900),
                        out / f"representation_{slug}", png=png)
            written[f"representation_{slug}"] = list(DIAGNOSTIC_CURVES)
    return written


def _sweep_name(sweep_file: str | os.PathLike[str]) -> str:
    return load_sweep(sweep_file).name


def _minus(a: float, b: float | None) -> float | None:
    return None if b is None else a - b


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="record the scripted learning histories and behaviour.json")
    docs = field_docs(HistorySpec)
    for name, f in HistorySpec.__dataclass_fields__.items():
        data.add_argument(f"--{name.replace('_', '-')}", type=type(f.default), default=f.default,
                          help=(docs.get(name) or "").replace("%", "%%"))  # argparse formats help with %
    summary = sub.add_parser("summary", help="the results summary JSON from the study's sweeps")
    summary.add_argument("sweeps", nargs="+", metavar="SWEEP.yaml")
    summary.add_argument("--out", default="", help="default: figures/<first sweep's name>.json")
    summary.add_argument("--table", default=None, metavar="TABLE.md", help="also write the summary as a markdown table")
    summary.add_argument("--behaviour", default=None, help="behaviour.json (default: next to the sweep's dataset)")
    summary.add_argument("--figure", default=None, metavar="PATH", help="also draw the per-game returns against the "
                         "references (PATH.html, and PATH.png where a Chromium is present)")
    summary.add_argument("--reps", type=int, default=2000)
    summary.add_argument("--seed", type=int, default=0)
    whole = sub.add_parser("all", help="the whole study in one command: the data (unless its behaviour.json exists), "
                                       "every sweep point, the summary, its table and the action profiles")
    whole.add_argument("sweep", metavar="SWEEP.yaml")
    whole.add_argument("--out", required=True, help="summary JSON, e.g. figures/minatar_study.json")
    whole.add_argument("--table", default=None, metavar="TABLE.md")
    whole.add_argument("--actions", default=None, metavar="ACTIONS.json", help="action profiles of every point")
    replay = sub.add_parser("behaviour", help="add the behaviour replayed under the agents' protocol to a data "
                                              "folder's behaviour.json (data recorded before it existed)")
    replay.add_argument("data", metavar="DATA_ROOT")
    replay.add_argument("--episodes", type=int, default=4, help="episodes per checkpoint")
    replay.add_argument("--noop-starts", type=int, default=0, help="the sweeps' eval_noop_starts")
    curves = sub.add_parser("curves", help="learning curves and representation diagnostics of every finished point")
    curves.add_argument("sweep", metavar="SWEEP.yaml")
    curves.add_argument("--out-dir", required=True)
    curves.add_argument("--png", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    actions = sub.add_parser("actions", help="how much each finished point's greedy actions depend on the frame")
    actions.add_argument("sweeps", nargs="+", metavar="SWEEP.yaml")
    actions.add_argument("--out", default="", help="default: figures/<first sweep's name>_actions.json")
    actions.add_argument("--max-steps", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            spec = HistorySpec(**{n: getattr(args, n) for n in HistorySpec.__dataclass_fields__})
            doc = record_history(spec)
            print(json.dumps({"behaviour": doc["behaviour"], "random": doc["random"]}, indent=1))
        elif args.command == "behaviour":
            bpath = resolve_path(args.data) / BEHAVIOUR_FILE
            doc = read_behaviour(bpath, for_replay=True)
            doc["behaviour_eval_protocol"] = behaviour_under_protocol(doc, episodes=args.episodes,
                                                                      noop_starts=args.noop_starts,
                                                                      seed=int(doc["spec"]["seed"]))
            atomic_write_json(bpath, doc)
            print(json.dumps(doc["behaviour_eval_protocol"], indent=1))
        elif args.command == "curves":
            print(json.dumps(sweep_curves(args.sweep, args.out_dir, png=args.png), indent=1))
        elif args.command == "all":
            run_study(args.sweep, out=args.out, table=args.table, actions=args.actions)
        elif args.command == "actions":
            profiles = sweep_action_profiles(args.sweeps, max_steps=args.max_steps)
            out_path = resolve_path(args.out or f"figures/{_sweep_name(args.sweeps[0])}_actions.json")
            atomic_write_json(out_path, profiles)
            print(f"{out_path}: {len(profiles['rows'])} rows")
        else:
            out = build_summary(args.sweeps, behaviour=args.behaviour, reps=args.reps, seed=args.seed)
            path = resolve_path(args.out or f"figures/{_sweep_name(args.sweeps[0])}.json")
            atomic_write_json(path, out)
            print(f"{path}: {len(out['results'])} rows, {len(out['aggregates'])} aggregate rows")
            if args.table:
                atomic_write_text(resolve_path(args.table), summary_table(out))
            if args.figure:
                from workbench.viz.export import save_figure  # noqa: PLC0415  (plotly, an optional extra)
                from workbench.viz.results_figures import make_study_scores_figure  # noqa: PLC0415  (plotly, an optional extra)

                save_figure(make_study_scores_figure(out), resolve_path(args.figure))
    except (ValueError, FileNotFoundError) as exc:  # BehaviourFileError included: one line naming the file
        print(f"{parser.prog} {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

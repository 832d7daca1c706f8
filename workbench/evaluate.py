"""The one evaluator for every method: vectorized eval-protocol episodes, batched inference.

Protocol (both papers): no sticky actions, epsilon-greedy with epsilon 0.001 over the game's valid
(minimal-set) actions, episodes capped at 27,000 agent steps (108,000 frames), a distinct seed per
episode. Episode ``k`` of game ``g`` gets seed :func:`episode_seed` ``(seed, g, k)``; that seed
resets the env *and* seeds the episode's own epsilon stream (``np.random.default_rng(seed)``: per
step one ``random()`` draw, then one ``integers(num_actions)`` draw when it is below epsilon), so an
episode's result does not depend on ``num_envs`` or on which other games run alongside it.

Batching: every game gets ``min(num_envs, episodes_per_game)`` env slots; all slots of all games
step in lock-step and the policy is called once per step with the stacks of *all* slots
(``(S, 4, H, W)``, ``game_ids (S,)``), so row ``i`` is always slot ``i``. After each step the
policy gets ``policy.observe(actions, rewards)``: the actions the slots executed (after epsilon
and no-op starts) and their raw rewards (idle slots: action 0, reward 0); policies with memory
get ``policy.reset(slot_indices)`` when those slots start an episode. Actions of slots that are
idle (no episode left) are ignored.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench import games as _games
from workbench import metrics as _metrics
from workbench import threads
from workbench.algos.base import Policy, check_policy
from workbench.envs import MAX_AGENT_STEPS, FrameStacker, make_vector
from workbench.fileio import atomic_write_json
from workbench.progress import progress_bar

__all__ = ["Policy", "episode_seed", "epsilon_greedy", "evaluate", "protocol_flags"]


def episode_seed(seed: int, game: str, episode: int) -> int:
    """Deterministic 31-bit seed of episode ``episode`` of ``game`` in an evaluation with ``seed``."""
    game = _games.canonical_game(game)
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(game.encode()), int(episode)])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def protocol_flags(per_game: dict[str, dict[str, Any]], max_agent_steps: int, epsilon: float,
                   mode: int | None, difficulty: int | None, sticky_actions: float = 0.0,
                   noop_starts: int = 0) -> dict[str, Any]:
    """Say whether scores are comparable to the papers' (their protocol: 27,000-step cap,
    epsilon 0.001, default mode and difficulty) and how many episodes a step cap cut short.
    A truncated episode's score is a partial return: under a small cap it can look good."""
    truncated = sum(bool(t) for g in per_game.values() for t in g["truncated"])
    total = sum(len(g["truncated"]) for g in per_game.values())
    deviations = []
    if max_agent_steps != MAX_AGENT_STEPS:
        deviations.append(f"episodes capped at {max_agent_steps:,} agent steps (protocol: {MAX_AGENT_STEPS:,})")
    if epsilon != 0.001:
        deviations.append(f"epsilon {epsilon} (protocol: 0.001)")
    if mode is not None or difficulty is not None:
        deviations.append(f"game variant mode={mode}, difficulty={difficulty}")
    if sticky_actions:
        deviations.append(f"sticky actions {sticky_actions} (the papers evaluate without)")
    if noop_starts:
        deviations.append(f"up to {noop_starts} no-op starts (the papers use none)")
    note = ""
    if deviations:
        note = "not comparable to the papers: " + "; ".join(deviations)
        if truncated:
            note += f"; {truncated} of {total} episodes were cut at the cap, so their scores are partial returns"
    return {"truncated_episodes": truncated, "comparable_to_papers": not deviations, "note": note}


def epsilon_greedy(rng: np.random.Generator, greedy: int, num_actions: int, epsilon: float) -> int:
    """One step of the episode's epsilon stream: a uniform valid action with prob. epsilon."""
    if rng.random() < epsilon:
        return int(rng.integers(num_actions))
    return int(greedy)


def _check_arguments(n_games: int, ids: np.ndarray, episodes_per_game: int, num_envs: int, epsilon: float,
                     max_agent_steps: int, sticky_actions: float, noop_starts: int) -> None:
    if ids.shape != (n_games,):
        raise ValueError(f"game_ids needs one id per game ({n_games}), got {list(np.atleast_1d(ids))}")
    if episodes_per_game < 1 or num_envs < 1:
        raise ValueError(
            f"episodes_per_game and num_envs must be >= 1, got {episodes_per_game}, {num_envs}"
        )
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    if not 1 <= max_agent_steps <= MAX_AGENT_STEPS:
        raise ValueError(f"max_agent_steps must be in 1..{MAX_AGENT_STEPS}, got {max_agent_steps}")
    if not 0.0 <= sticky_actions < 1.0:
        raise ValueError(f"sticky_actions must be in [0, 1), got {sticky_actions}")
    if noop_starts < 0:
        raise ValueError(f"noop_starts must be >= 0, got {noop_starts}")


class _Slots:
    """Every env slot of every game (slot ``s`` = row ``s`` of the policy's batch): the vector
    envs, the frame stacks, and each slot's episode, return, length, epsilon stream and no-op
    starts still to play; finished episodes' results per game."""

    def __init__(self, games: Sequence[str], vecs: list[Any], n_slots: int, episodes: int,
                 seeds: dict[str, list[int]], noop_starts: int) -> None:
        self.games, self.vecs, self.n_slots, self.episodes = games, vecs, n_slots, episodes
        self.seeds, self.noop_starts = seeds, noop_starts
        S = len(games) * n_slots
        self.slot_game = np.repeat(np.arange(len(games)), n_slots)
        self.n_act = np.array([_games.num_actions(g) for g in games])[self.slot_game]
        self.stacker = FrameStacker(S, _games.geometry_of(games).frame_shape)
        self.episode = np.full(S, -1, np.int64)  # episode index each slot is running, -1 when idle
        self.ret = np.zeros(S, np.float64)
        self.length = np.zeros(S, np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * S
        self.noops_left = np.zeros(S, np.int64)  # no-op start steps still to play (noop_starts > 0)
        self.next_ep = [0] * len(games)
        self.results: dict[str, dict[str, Any]] = {
            g: {"scores": [0.0] * episodes, "lengths": [0] * episodes, "truncated": [False] * episodes,
                "seeds": seeds[g]} for g in games
        }

    def start(self, gi: int, local: Sequence[int], policy: Policy) -> None:
        """Start the next episodes of game ``gi`` in its local slots ``local``."""
        game = self.games[gi]
        local = list(local)[: self.episodes - self.next_ep[gi]]
        if not local:
            return
        ks = list(range(self.next_ep[gi], self.next_ep[gi] + len(local)))
        self.next_ep[gi] += len(local)
        obs = self.vecs[gi].reset_envs(local, [self.seeds[game][k] for k in ks])
        glob = [gi * self.n_slots + j for j in local]
        self.stacker.reset(glob, obs)
        for s, k in zip(glob, ks):
            self.episode[s], self.ret[s], self.length[s] = k, 0.0, 0
            rng = self.rngs[s] = np.random.default_rng(self.seeds[game][k])
            if self.noop_starts:
                self.noops_left[s] = rng.integers(self.noop_starts + 1)
        policy.reset(np.asarray(glob, np.int64))

    def actions(self, greedy: np.ndarray, epsilon: float) -> np.ndarray:
        """The executed actions: checked greedy ones, no-op starts first, then epsilon-greedy."""
        S = len(self.episode)
        if greedy.shape != (S,) or not np.issubdtype(greedy.dtype, np.integer):
            raise ValueError(f"policy.act must return int actions of shape ({S},), got {greedy.dtype} {greedy.shape}")
        active = self.episode >= 0
        bad = active & ((greedy < 0) | (greedy >= self.n_act))
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            raise ValueError(f"policy.act returned action {int(greedy[s])} for {self.games[self.slot_game[s]]}, "
                             f"valid minimal-set indices are 0..{self.n_act[s] - 1}")
        actions = np.zeros(S, np.int64)
        for s in np.flatnonzero(active).tolist():
            if self.noops_left[s]:  # NOOP is index 0 of every minimal action set
                self.noops_left[s] -= 1
                continue
            rng = self.rngs[s]
            assert rng is not None  # an active slot has started an episode
            actions[s] = epsilon_greedy(rng, int(greedy[s]), int(self.n_act[s]), epsilon)
        return actions

    def step(self, actions: np.ndarray, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        """Step every game's envs; returns (episode ended, cut at the cap) per slot."""
        S, n = len(self.episode), self.n_slots
        active = self.episode >= 0
        frames = np.zeros((S, *self.stacker.frame_shape), np.uint8)
        rewards = np.zeros(S, np.float64)
        done = np.zeros(S, bool)
        truncated = np.zeros(S, bool)
        for gi, vec in enumerate(self.vecs):
            sl = slice(gi * n, (gi + 1) * n)
            obs, rew, term, trunc, _ = vec.step(actions[sl])
            frames[sl] = obs
            rewards[sl] = np.where(active[sl], rew, 0.0)
            done[sl] = (term | trunc) & active[sl]
            truncated[sl] = trunc & active[sl]
        self.ret += rewards
        policy.observe(actions, rewards)  # what was executed, before any slot restarts
        self.length[active] += 1
        self.stacker.push(frames)
        return done, truncated

    def finish(self, done: np.ndarray, truncated: np.ndarray, policy: Policy) -> int:
        """Record the ended episodes and start the next ones in their slots; returns how many ended."""
        ended = 0
        for gi, game in enumerate(self.games):
            finished = [j for j in range(self.n_slots) if done[gi * self.n_slots + j]]
            for j in finished:
                s = gi * self.n_slots + j
                k, r = int(self.episode[s]), self.results[game]
                r["scores"][k], r["lengths"][k], r["truncated"][k] = float(self.ret[s]), int(self.length[s]), \
                    bool(truncated[s])
                self.episode[s] = -1
            if finished:
                self.start(gi, finished, policy)
            ended += len(finished)
        return ended


def evaluate(
    policy: Any,
    games: str | Sequence[str],
    *,
    game_ids: Sequence[int] | None = None,
    episodes_per_game: int = 16,
    num_envs: int = 8,
    seed: int = 0,
    epsilon: float = 0.001,
    max_agent_steps: int = MAX_AGENT_STEPS,
    mode: int | None = None,
    difficulty: int | None = None,
    out_path: str | None = None,
    progress: bool = True,
    backend: str = "auto",
    reps: int = 1000,
    sticky_actions: float = 0.0,
    noop_starts: int = 0,
) -> dict[str, Any]:
    """Evaluate ``policy`` on ``games`` under the eval protocol; returns (and writes) a results dict.

    Beyond the papers (opt-in; both are recorded in the results and flag them as not comparable):
    ``sticky_actions`` repeats the previous action with that probability (Machado et al.'s 0.25),
    and ``noop_starts`` begins each episode with k ~ U{0..noop_starts} no-op actions drawn from
    the episode's own stream, so a fixed policy's episodes differ and the CIs say something.

    ``game_ids[i]`` is the id the policy knows ``games[i]`` by (default ``i``). Result keys:
    ``per_game[game]`` with per-episode ``scores``, ``lengths``, ``truncated``, ``seeds`` and the
    ``mean``; ``human_normalized[game]`` (mean score normalized, None without reference scores);
    ``aggregates`` (IQM/median/mean/optimality gap over per-game means, as the papers report them)
    and ``aggregates_by_episode`` (episodes as runs, stratified-bootstrap CIs), or None when a game
    has no human reference score.
    """
    policy = check_policy(policy)
    game_list = _games.resolve_games(games)
    ids = np.arange(len(game_list), dtype=np.int64) if game_ids is None else np.asarray(game_ids, np.int64)
    _check_arguments(len(game_list), ids, episodes_per_game, num_envs, epsilon, max_agent_steps, sticky_actions,
                     noop_starts)
    E = int(episodes_per_game)
    n_slots = min(int(num_envs), E)
    seeds = {g: [episode_seed(seed, g, k) for k in range(E)] for g in game_list}
    flat = [s for g in game_list for s in seeds[g]]
    if len(set(flat)) != len(flat):  # 31-bit seeds: a collision is astronomically unlikely
        raise RuntimeError(f"episode seed collision for seed={seed}; use another seed")

    # sticky_actions 0 keeps the protocol's own: none on Atari, MinAtar's 0.1 (part of that game).
    vecs = [
        make_vector(
            g, n_slots, "eval", mode=mode, difficulty=difficulty, backend=backend,  # type: ignore[arg-type]
            max_agent_steps=max_agent_steps, repeat_action_probability=sticky_actions or None,
        )
        for g in game_list
    ]  # fmt: skip
    slots = _Slots(game_list, vecs, n_slots, E, seeds, noop_starts)
    slot_ids = ids[slots.slot_game]
    bar = progress_bar(total=len(game_list) * E, desc="evaluate", unit="episode", disable=not progress)
    with threads.inference_threads():  # the CPUs free at the start (workbench.threads)
        try:
            for gi in range(len(game_list)):
                slots.start(gi, range(n_slots), policy)
            while (slots.episode >= 0).any():
                greedy = np.asarray(policy.act(slots.stacker.stacks, slot_ids))
                done, truncated = slots.step(slots.actions(greedy, epsilon), policy)
                bar.update(slots.finish(done, truncated, policy))
        finally:
            bar.close()
            for v in vecs:
                v.close()
    out = {
        "games": list(game_list), "game_ids": ids.tolist(), "episodes_per_game": E, "num_envs": n_slots,
        "seed": int(seed), "epsilon": float(epsilon), "max_agent_steps": int(max_agent_steps), "mode": mode,
        "difficulty": difficulty, "sticky_actions": float(sticky_actions), "noop_starts": int(noop_starts),
        **_scores(slots.results, seed, reps),
    }
    out.update(protocol_flags(out["per_game"], max_agent_steps, epsilon, mode, difficulty, sticky_actions,
                              noop_starts))
    if out_path is not None:
        atomic_write_json(out_path, out)
    return out


def _scores(results: dict[str, dict[str, Any]], seed: int, reps: int) -> dict[str, Any]:
    """Per-game scores with their means, human-normalized means, and the aggregates (over games'
    means as the papers report them, and with episodes as runs) when every game has a reference."""
    per_game = {g: {**r, "mean": float(np.mean(r["scores"]))} for g, r in results.items()}
    hns: dict[str, float | None] = {
        g: _metrics.normalize_score(g, per_game[g]["mean"]) if _metrics.has_reference(g) else None for g in per_game
    }
    aggregates = by_episode = None
    if all(v is not None for v in hns.values()):
        means = {"policy": {g: per_game[g]["mean"] for g in per_game}}
        aggregates = _metrics.aggregate(means, "human", reps=1, seed=seed)["policy"]
        for name in list(aggregates):
            if name.endswith("_ci"):
                del aggregates[name]  # one number per game: no interval
        eps = {"policy": {g: per_game[g]["scores"] for g in per_game}}
        by_episode = _metrics.aggregate(eps, "human", reps=reps, seed=seed)["policy"]
    return {"per_game": per_game, "human_normalized": hns, "aggregates": aggregates,
            "aggregates_by_episode": by_episode}

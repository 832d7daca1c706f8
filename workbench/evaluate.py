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
from tqdm.auto import tqdm

from workbench import games as _games
from workbench import metrics as _metrics
from workbench.algos.base import Policy, check_policy
from workbench.envs import MAX_AGENT_STEPS, FrameStacker, make_vector
from workbench.fileio import atomic_write_json

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
    G = len(game_list)
    ids = np.arange(G, dtype=np.int64) if game_ids is None else np.asarray(game_ids, np.int64)
    if ids.shape != (G,):
        raise ValueError(f"game_ids needs one id per game ({G}), got {list(np.atleast_1d(ids))}")
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
    S = G * n_slots
    slot_game = np.repeat(np.arange(G), n_slots)
    slot_ids = ids[slot_game]
    n_act = np.array([_games.num_actions(g) for g in game_list])[slot_game]
    stacker = FrameStacker(S, _games.geometry_of(game_list).frame_shape)
    episode = np.full(S, -1, np.int64)  # episode index each slot is running, -1 when idle
    ret = np.zeros(S, np.float64)
    length = np.zeros(S, np.int64)
    rngs: list[np.random.Generator | None] = [None] * S
    noops_left = np.zeros(S, np.int64)  # no-op start steps still to play (noop_starts > 0)
    next_ep = [0] * G
    res: dict[str, dict[str, Any]] = {
        g: {"scores": [0.0] * E, "lengths": [0] * E, "truncated": [False] * E, "seeds": seeds[g]}
        for g in game_list
    }

    def start(gi: int, local: Sequence[int]) -> None:
        """Start the next episodes of game gi in its local slots ``local``."""
        local = list(local)[: E - next_ep[gi]]
        if not local:
            return
        ks = list(range(next_ep[gi], next_ep[gi] + len(local)))
        next_ep[gi] += len(local)
        obs = vecs[gi].reset_envs(local, [seeds[game_list[gi]][k] for k in ks])
        glob = [gi * n_slots + j for j in local]
        stacker.reset(glob, obs)
        for s, k in zip(glob, ks):
            episode[s], ret[s], length[s] = k, 0.0, 0
            rngs[s] = np.random.default_rng(seeds[game_list[gi]][k])
            if noop_starts:
                noops_left[s] = rngs[s].integers(noop_starts + 1)  # type: ignore[union-attr]
        policy.reset(np.asarray(glob, np.int64))

    for gi in range(G):
        start(gi, list(range(n_slots)))
    bar = tqdm(total=G * E, desc="evaluate", unit="episode", disable=not progress)
    try:
        while (episode >= 0).any():
            greedy = np.asarray(policy.act(stacker.stacks, slot_ids))
            if greedy.shape != (S,) or not np.issubdtype(greedy.dtype, np.integer):
                raise ValueError(
                    f"policy.act must return int actions of shape ({S},), got {greedy.dtype} "
                    f"{greedy.shape}"
                )
            active = episode >= 0
            bad = active & ((greedy < 0) | (greedy >= n_act))
            if bad.any():
                s = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"policy.act returned action {int(greedy[s])} for {game_list[slot_game[s]]}, "
                    f"valid minimal-set indices are 0..{n_act[s] - 1}"
                )
            actions = np.zeros(S, np.int64)
            for s in np.flatnonzero(active).tolist():
                if noops_left[s]:  # NOOP is index 0 of every minimal action set
                    noops_left[s] -= 1
                    continue
                actions[s] = epsilon_greedy(rngs[s], int(greedy[s]), int(n_act[s]), epsilon)  # type: ignore[arg-type]
            frames = np.zeros((S, *stacker.frame_shape), np.uint8)
            rewards = np.zeros(S, np.float64)
            done = np.zeros(S, bool)
            trunc_all = np.zeros(S, bool)
            for gi, vec in enumerate(vecs):
                sl = slice(gi * n_slots, (gi + 1) * n_slots)
                obs, rew, term, trunc, _ = vec.step(actions[sl])
                frames[sl] = obs
                rewards[sl] = np.where(active[sl], rew, 0.0)
                done[sl] = (term | trunc) & active[sl]
                trunc_all[sl] = trunc & active[sl]
            ret += rewards
            policy.observe(actions, rewards)  # what was executed, before any slot restarts
            length[active] += 1
            stacker.push(frames)
            for gi in range(G):
                finished = [j for j in range(n_slots) if done[gi * n_slots + j]]
                for j in finished:
                    s = gi * n_slots + j
                    r = res[game_list[gi]]
                    k = int(episode[s])
                    r["scores"][k] = float(ret[s])
                    r["lengths"][k] = int(length[s])
                    r["truncated"][k] = bool(trunc_all[s])
                    episode[s] = -1
                    bar.update(1)
                if finished:
                    start(gi, finished)
    finally:
        bar.close()
        for v in vecs:
            v.close()

    per_game = {}
    for g in game_list:
        r = res[g]
        per_game[g] = {**r, "mean": float(np.mean(r["scores"]))}
    hns: dict[str, float | None] = {
        g: _metrics.normalize_score(g, per_game[g]["mean"]) if _metrics.has_reference(g) else None
        for g in game_list
    }
    aggregates = by_episode = None
    if all(v is not None for v in hns.values()):
        means = {"policy": {g: per_game[g]["mean"] for g in game_list}}
        aggregates = _metrics.aggregate(means, "human", reps=1, seed=seed)["policy"]
        for name in list(aggregates):
            if name.endswith("_ci"):
                del aggregates[name]  # one number per game: no interval
        eps = {"policy": {g: per_game[g]["scores"] for g in game_list}}
        by_episode = _metrics.aggregate(eps, "human", reps=reps, seed=seed)["policy"]
    out = {
        "games": list(game_list),
        "game_ids": ids.tolist(),
        "episodes_per_game": E,
        "num_envs": n_slots,
        "seed": int(seed),
        "epsilon": float(epsilon),
        "max_agent_steps": int(max_agent_steps),
        "mode": mode,
        "difficulty": difficulty,
        "sticky_actions": float(sticky_actions),
        "noop_starts": int(noop_starts),
        "per_game": per_game,
        "human_normalized": hns,
        "aggregates": aggregates,
        "aggregates_by_episode": by_episode,
        **protocol_flags(per_game, max_agent_steps, epsilon, mode, difficulty, sticky_actions, noop_starts),
    }
    if out_path is not None:
        atomic_write_json(out_path, out)
    return out

"""Batched beam search over JOWA's world model (paper Sec. 4.2, Eq. 12), and the planner policy.

For every environment, starting from its current state s_0 (context + current frame's tokens):

- expand each beam node with its top-K valid actions by Q;
- roll the world model one step for every child: the action token gives the predicted reward
  (expected value of the reward-sign head, in [-1, 1], the scale of the clipped training rewards)
  and termination (probability > 0.5), then the 36 next-frame tokens are decoded greedily
  (argmax, so planning is deterministic) and the last one gives Q at the new state;
- score each child ``sum_{t<=d} gamma^t r_t + gamma^(d+1) max_a Q(s_{d+1}, a)``; a child whose
  step is predicted terminal is scored ``sum_t gamma^t r_t`` with no bootstrap and is never
  expanded again (its score is carried unchanged to later depths);
- keep the K best children per environment; after H steps return the first action of the best
  leaf. H = 0 or K = 1 is greedy in Q.

Everything is batched: one forward call per token group (the action token, then each of the 36
observation tokens) covers all environments x beams x children. The context (previous steps and
the current frame, 221 tokens with 5 context steps) is run once per environment and its keys
and values are shared by all that environment's beams and children; a beam's finished imagined
steps are stored once per beam (gathered when the beams are chosen, at most (H - 1) x 37
tokens), and only the step being imagined is stored per child. A new token attends to the three
parts under one softmax (`_SharedContext`). ``shared_prefix=False`` runs the previous layout, a
full copy of the context per child (`_CopiedContext`); both give the same actions and trees
(scores equal up to fp32 rounding). ``SearchProfile`` times the search's phases. No frame is decoded to
pixels: with ``return_tree`` the best path's imagined tokens are returned, and
``PlannerPolicy.decode_predicted_frames`` decodes them only when an inspector asks.
``beam_search_sequential`` runs the same search one environment and one child at a time, as an
independent reference for tests.

Actions: the search runs in the model's space of 18 ALE actions (``valid_mask`` marks each game's
buttons, action tokens and Q slots are ALE ids). ``PlannerPolicy`` is the boundary to the
environment: it takes and returns minimal-set indices, and maps its trees, paths and root
distributions to them, so everything outside JOWA keeps minimal indices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workbench.games import MAX_ACTIONS
from workbench.losses import masked_argmax
from workbench.models.gpt import Block, KVCache
from workbench.models.tokenizer import FRAME_SIZE, TOKENS_PER_FRAME, Tokenizer
from workbench.models.world_action import TOKENS_PER_STEP, ActionSpace, WorldActionModel

__all__ = [
    "SearchNode", "SearchTree", "PlanResult", "SearchProfile", "beam_search", "beam_search_sequential",
    "PlannerPolicy", "max_context_steps", "paper_beam_width", "PAPER_WIDE_BEAM",
]

_REWARD_VALUES = (-1.0, 0.0, 1.0)

PAPER_WIDE_BEAM = 3
"""K for a game of 10 or more valid actions, where the paper allows 3 or 4 (``paper_beam_width``)."""


def paper_beam_width(num_actions: int, wide: int = PAPER_WIDE_BEAM) -> int:
    """JOWA's evaluation beam width K from a game's number of valid actions (paper 003, App. E.3):
    "K to 2 if the valid action space size is less than 10, otherwise K in {3, 4}".

    ``wide`` picks from {3, 4} for 10+ actions. Table 16 gives 3 to Seaquest, StarGunner, Zaxxon
    (18 actions) and TimePilot (10), 4 to Berzerk, Centipede, ChopperCommand (18); the reference
    code's eval/JOWA_150M_raw_scores.json uses 4 for more of them. The held-out games have no
    published K, so the default is 3, the one value Table 16 uses for both 10 and 18 actions.
    Table 16 also lists Atlantis with 18 actions and K = 3, but its minimal set has 4 (ALE, and the
    reference code's action tokenizer): by the rule, 2.
    """
    if not 1 <= num_actions <= MAX_ACTIONS:
        raise ValueError(f"a game has 1..{MAX_ACTIONS} valid actions, got {num_actions}")
    if wide not in (3, 4):
        raise ValueError(f"the paper's beam width for 10+ actions is 3 or 4, got {wide}")
    return 2 if num_actions < 10 else wide


@dataclass
class SearchNode:
    """One node of a search tree (docs/architecture.md).

    ``reward``: predicted reward of the edge into this node; ``q``: Q(parent state, action) (for
    the root: max Q of s_0); ``score``: discounted predicted return to this node plus
    gamma^depth max Q at it (no bootstrap when ``terminal``); ``kept``: the beam kept it.
    """

    id: int
    parent: int
    depth: int
    action: int
    reward: float
    q: float
    score: float
    kept: bool
    terminal: bool


@dataclass
class SearchTree:
    nodes: list[SearchNode]
    chosen_action: int


@dataclass
class PlanResult:
    actions: Tensor
    """(N,) int64 chosen actions (slots of the model's 18-action space: ALE ids)."""
    root_q: Tensor
    """(N, 18) expected Q at s_0 (invalid slots -inf)."""
    trees: list[SearchTree] | None = None
    root_probs: Tensor | None = None
    """(N, 18, atoms) C51 probabilities at s_0 (all 18 slots; invalid ones are not masked)."""
    path_actions: Tensor | None = None
    """(N, H) actions of the best path (the one whose first action is chosen), with
    ``return_tree`` and a real search (H >= 1, K >= 2); -1 after the path's predicted end."""
    path_tokens: Tensor | None = None
    """(N, H, 36) the world model's greedily decoded next-frame tokens along the best path
    (step d: the frame after ``path_actions[:, d]``), same condition as ``path_actions``."""
    path_valid: Tensor | None = None
    """(N, H) bool: step d of the best path is a real imagined transition (False on and after a
    predicted termination, where the next frame is not a successor state)."""
    path_rewards: Tensor | None = None
    """(N, H) the world model's predicted rewards of the best path's steps (expected reward
    sign, in [-1, 1]; 0 after the path's predicted end), same condition as ``path_actions``."""
    path_terminal: Tensor | None = None
    """(N, H) bool: the world model predicts that step d of the best path ends the episode."""


def max_context_steps(model: WorldActionModel, horizon: int) -> int:
    """Most previous steps that fit in the context with the current frame and H imagined steps."""
    return model.cfg.max_steps - 1 - horizon


# ----------------------------------------------------------------------------- model steps

def _reward_term(model: WorldActionModel, h: Tensor) -> tuple[Tensor, Tensor]:
    values = torch.tensor(_REWARD_VALUES, device=h.device)
    reward = (torch.softmax(model.reward_head(h).float(), -1) * values).sum(-1)
    terminal = torch.softmax(model.term_head(h).float(), -1)[..., 1] > 0.5
    return reward, terminal


def _masked_q(model: WorldActionModel, h: Tensor, valid_mask: Tensor) -> Tensor:
    return model.q_values(model.q_head(h), valid_mask)


def _prefix(
    model: WorldActionModel, obs_tokens: Tensor, game_id: Tensor, ctx_tokens: Tensor | None,
    ctx_actions: Tensor | None, ctx_valid: Tensor | None, capacity: int | None = None,
) -> tuple[KVCache, Tensor]:
    """Run context + current frame into a fresh cache; returns (cache, hidden at the last token).

    ``capacity`` defaults to the prefix's own length (a cache that is only read afterwards)."""
    N = obs_tokens.shape[0]
    dev = obs_tokens.device
    parts, valid = [obs_tokens.long()], [torch.ones(N, TOKENS_PER_FRAME, dtype=torch.bool, device=dev)]
    is_act = [torch.zeros(TOKENS_PER_FRAME, dtype=torch.bool, device=dev)]
    if ctx_tokens is not None and ctx_tokens.shape[1] > 0:
        if ctx_actions is None or ctx_valid is None:
            raise ValueError("ctx_tokens needs ctx_actions and ctx_valid (one action and one flag per context step)")
        C = ctx_tokens.shape[1]
        parts.insert(0, model.interleave(ctx_tokens, ctx_actions))
        valid.insert(0, ctx_valid.bool().repeat_interleave(TOKENS_PER_STEP, dim=1))
        is_act.insert(0, model.action_pattern[: C * TOKENS_PER_STEP])
    tokens, valid_t, is_action = torch.cat(parts, 1), torch.cat(valid, 1), torch.cat(is_act)
    capacity = tokens.shape[1] if capacity is None else capacity
    if tokens.shape[1] > capacity:
        raise ValueError(f"context of {tokens.shape[1]} tokens exceeds the cache capacity {capacity}")
    cache = model.gpt.new_cache(N, capacity, device=dev)
    h = model.forward_tokens(tokens, is_action, game_id, cache=cache, valid=valid_t)
    return cache, h[:, -1]


class _CopiedContext:
    """Rows that each hold a full copy of their environment's context in one `KVCache`.

    The previous planner's layout (and the public implementation's): branching into children
    copies the whole context per child, and every new token attends over its own copy. Kept as
    the reference the shared-prefix path is tested against, and for ``beam_search_sequential``.
    """

    def __init__(self, model: WorldActionModel, cache: KVCache) -> None:
        self.model, self.cache = model, cache

    def children(self, k: int) -> _CopiedContext:
        """k rows per current row (each a copy), row-major."""
        rows = torch.arange(self.cache.batch_size, device=self.cache.k.device).repeat_interleave(k)
        return _CopiedContext(self.model, self.cache.index_select(rows))

    def select(self, rows: Tensor) -> _CopiedContext:
        return _CopiedContext(self.model, self.cache.index_select(rows))

    def forward(self, tokens: Tensor, is_action: bool, game_id: Tensor) -> Tensor:
        """Append one token per row; returns the final hidden states (M, D)."""
        flag = torch.full((1,), is_action, dtype=torch.bool, device=tokens.device)
        return self.model.forward_tokens(tokens.long()[:, None], flag, game_id, cache=self.cache)[:, -1]


def _scores(q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """Dot products of M row queries (M, heads, hd) with the keys (G, heads, L, hd) of G groups of
    M / G consecutive rows (+ ``bias`` (G, 1, 1, L)) -> (M, heads, L). Each group's keys are
    read once for all its rows."""
    M, n_head, hd = q.shape
    G = k.shape[0]
    s = q.view(G, M // G, n_head, hd).transpose(1, 2) @ k.transpose(-1, -2)  # (G, heads, R, L)
    if bias is not None:
        s = s + bias
    return s.transpose(1, 2).reshape(M, n_head, k.shape[2])


def _mix(p: Tensor, v: Tensor) -> Tensor:
    """Attention weights (M, heads, L) times the values (G, heads, L, hd) of G row groups -> (M, heads, hd)."""
    M, n_head, L = p.shape
    G = v.shape[0]
    y = p.view(G, M // G, n_head, L).transpose(1, 2) @ v  # (G, heads, R, hd)
    return y.transpose(1, 2).reshape(M, n_head, v.shape[3])


class _SharedContext:
    """Rows (beams or children) whose keys and values are stored once per sharing level.

    Three parts, each with its own grouping of the (environment-major) rows:

    - ``prefix``: the context (previous steps + current frame), once per environment (N groups);
      left padding is masked by ``prefix_bias``;
    - ``path``: the imagined steps a beam has finished, once per beam (``path_k``/``path_v``
      ``(layers, beams, heads, L, hd)``; none at depth 0); its children are consecutive rows;
    - ``step``: the step being imagined now (at most 37 tokens), one per row (a `KVCache`).

    A new token's query scores the three parts' keys and one softmax runs over all of them, so
    the result is attention over the row's whole sequence (context + path + step), the same as a
    per-row copy of it would give (up to fp32 rounding), with the context neither copied nor
    read once per row. The transformer is run here token group by token group with the model's
    own layers (the operations of `GPT.forward` in eval mode, where dropout is the identity).
    """

    def __init__(self, model: WorldActionModel, prefix: KVCache, prefix_bias: Tensor,
                 path_k: Tensor | None, path_v: Tensor | None, next_pos: Tensor, step: KVCache | None) -> None:
        self.model, self.prefix, self.prefix_bias = model, prefix, prefix_bias
        self.path_k, self.path_v, self.next_pos, self.step = path_k, path_v, next_pos, step

    @classmethod
    def start(cls, model: WorldActionModel, prefix: KVCache) -> _SharedContext:
        """One beam per environment (the root), with an empty path."""
        bias = torch.zeros(prefix.valid.shape, device=prefix.k.device).masked_fill(~prefix.valid, float("-inf"))
        return cls(model, prefix, bias[:, None, None, :], None, None, prefix.next_pos, None)

    def children(self, k: int) -> _SharedContext:
        """k rows per beam (consecutive), each starting an empty step."""
        beams = self.next_pos.shape[0]
        step = self.model.gpt.new_cache(beams * k, TOKENS_PER_STEP, device=self.prefix.k.device)
        step.next_pos = self.next_pos.repeat_interleave(k)  # positions continue the beam's sequence
        return _SharedContext(self.model, self.prefix, self.prefix_bias, self.path_k, self.path_v, self.next_pos, step)

    def _rows(self) -> KVCache:
        if self.step is None:
            raise RuntimeError("these are beams, not rows: call children(k) first")
        return self.step

    def select(self, rows: Tensor) -> _SharedContext:
        """Rows ``rows`` become the new beams (environment-major, the same count per environment):
        each beam's path is its parent's path plus its own finished step."""
        step = self._rows()
        k = step.batch_size // self.next_pos.shape[0]  # rows per current beam
        step_k, step_v = step.k[:, rows, :, :step.length], step.v[:, rows, :, :step.length]
        if self.path_k is None or self.path_v is None:
            path_k, path_v = step_k, step_v
        else:
            parent = rows // k
            path_k = torch.cat([self.path_k[:, parent], step_k], 3)
            path_v = torch.cat([self.path_v[:, parent], step_v], 3)
        return _SharedContext(self.model, self.prefix, self.prefix_bias, path_k, path_v, step.next_pos[rows], None)

    def forward(self, tokens: Tensor, is_action: bool, game_id: Tensor) -> Tensor:
        """Append one token per row to its step; returns the final hidden states (M, D)."""
        model, gpt, step = self.model, self.model.gpt, self._rows()
        tokens, game_id = tokens.long(), game_id.long()
        if is_action:
            x = model.act_emb(tokens) + model.task_act_emb(game_id)
        else:
            x = model.obs_emb(tokens) + model.task_obs_emb(game_id)
        x = x + gpt.pos_emb(step.next_pos)
        M, D = x.shape
        slot = step.length
        for i, block in enumerate(gpt.blocks):
            assert isinstance(block, Block)  # GPT.blocks holds Blocks (a ModuleList is untyped)
            attn = block.attn
            q, k, v = attn.qkv(block.ln_1(x)).view(M, 3, attn.n_head, attn.head_dim).unbind(1)
            step.k[i, :, :, slot] = k.to(step.k.dtype)
            step.v[i, :, :, slot] = v.to(step.v.dtype)
            x = x + attn.proj(self._attend(step, i, q, slot + 1).reshape(M, D))
            x = x + block.mlp(block.ln_2(x))
        step.valid[:, slot] = True
        step.next_pos = step.next_pos + 1
        step.length = slot + 1
        return gpt.ln_f(x)

    def _attend(self, step: KVCache, layer: int, q: Tensor, n_step: int) -> Tensor:
        """One query per row (M, heads, hd) over its prefix, path and first ``n_step`` step slots."""
        dt = q.dtype
        q = q * q.shape[-1] ** -0.5
        kp, vp = self.prefix.k[layer].to(dt), self.prefix.v[layer].to(dt)
        ks, vs = step.k[layer, :, :, :n_step].to(dt), step.v[layer, :, :, :n_step].to(dt)
        parts = [_scores(q, kp, self.prefix_bias)]
        if self.path_k is not None and self.path_v is not None:
            parts.append(_scores(q, self.path_k[layer].to(dt)))
        parts.append((q[:, :, None] @ ks.transpose(-1, -2))[:, :, 0])  # each row's own step
        p = torch.softmax(torch.cat(parts, -1).float(), -1).to(dt)
        P = kp.shape[2]
        y = _mix(p[..., :P], vp) + (p[..., -n_step:, None].transpose(-1, -2) @ vs)[:, :, 0]
        if self.path_k is not None and self.path_v is not None:
            y = y + _mix(p[..., P:-n_step], self.path_v[layer].to(dt))
        return y


class _NoClock:
    """Stand-in for `SearchProfile` when nothing is timed."""

    @contextmanager
    def phase(self, name: str):
        yield


_NO_CLOCK = _NoClock()


class SearchProfile:
    """Wall-clock seconds per phase, summed over the `beam_search` calls it is passed to.

    Phases: ``prefix`` (context + current frame through the transformer, Q at the root),
    ``action_token`` (the action token of every child, reward and termination heads),
    ``obs_tokens`` (the 36 greedily decoded observation tokens), ``q_readout`` (Q head at each
    child's new state) and ``bookkeeping`` (the rest: expansion, scoring, beam selection,
    cache gathers, trees). ``shares()`` gives each phase's fraction of the total.
    """

    PHASES = ("prefix", "action_token", "obs_tokens", "q_readout", "bookkeeping")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.total = 0.0
        self._sync = lambda: None

    @contextmanager
    def phase(self, name: str):
        if name not in self.PHASES:
            raise ValueError(f"unknown search phase {name!r}; valid: {', '.join(self.PHASES)}")
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t0

    @contextmanager
    def _search(self, device: torch.device):
        """Time one whole search; what no phase claims is bookkeeping."""
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        named = sum(v for k, v in self.seconds.items() if k != "bookkeeping")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - t0
            self.total += elapsed
            now = sum(v for k, v in self.seconds.items() if k != "bookkeeping")
            self.seconds["bookkeeping"] += elapsed - (now - named)

    def shares(self) -> dict[str, float]:
        return {k: (v / self.total if self.total else 0.0) for k, v in self.seconds.items()}


def _imagine_step(
    model: WorldActionModel, ctx: _SharedContext | _CopiedContext, actions: Tensor, game_id: Tensor,
    valid_mask: Tensor, clock: SearchProfile | _NoClock = _NO_CLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Append one imagined step to every row of ``ctx`` (in place).

    Feeds the action token, then the 36 greedily decoded observation tokens, one token group per
    forward call. Returns (reward (M,), terminal (M,) bool, masked Q at the new state (M, 18),
    the imagined next frame's tokens (M, 36)).
    """
    with clock.phase("action_token"):
        h = ctx.forward(actions, True, game_id)
        reward, terminal = _reward_term(model, h)
    with clock.phase("obs_tokens"):
        tokens = []
        for _ in range(TOKENS_PER_FRAME):
            token = model.obs_head(h).argmax(-1)
            tokens.append(token)
            h = ctx.forward(token, False, game_id)
    with clock.phase("q_readout"):
        q = _masked_q(model, h, valid_mask)
    return reward, terminal, q, torch.stack(tokens, -1)


def _expand(q: Tensor, alive: Tensor, beam_ok: Tensor, k_env: Tensor, k_max: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k_max actions of each beam node: (actions, their Q, child_ok) each (N, B, k_max).

    Ranks >= the env's K, invalid actions (-inf Q) and padding beams are not real children; a
    terminated beam keeps one 'carry' child (rank 0) that holds its final score.
    """
    top_q, top_a = q.topk(k_max, dim=-1)
    rank = torch.arange(k_max, device=q.device)
    ok = beam_ok[..., None] & (rank < k_env[:, None, None]) & torch.isfinite(top_q)
    ok = torch.where(alive[..., None], ok, beam_ok[..., None] & (rank == 0))
    return top_a, top_q, ok


def _score_children(
    G: Tensor, alive: Tensor, reward: Tensor, terminal: Tensor, q_next: Tensor, depth: int, gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(child return so far, child alive, child score) for parents with return G and status alive."""
    G_child = torch.where(alive, G + gamma ** depth * reward, G)
    alive_child = alive & ~terminal
    boot = gamma ** (depth + 1) * q_next.max(-1).values
    score = torch.where(alive_child, G_child + boot, G_child)
    return G_child, alive_child, score


# ----------------------------------------------------------------------------- batched search

@torch.no_grad()
def beam_search(
    model: WorldActionModel,
    obs_tokens: Tensor,
    game_id: Tensor,
    valid_mask: Tensor,
    horizon: int,
    beam_width: int | Tensor,
    gamma: float = 0.99,
    ctx_tokens: Tensor | None = None,
    ctx_actions: Tensor | None = None,
    ctx_valid: Tensor | None = None,
    return_tree: bool = False,
    shared_prefix: bool = True,
    profile: SearchProfile | None = None,
) -> PlanResult:
    """Beam search for N environments at once.

    ``obs_tokens`` (N, 36) current frames' tokens; ``game_id`` (N,); ``valid_mask`` (N, 18);
    ``beam_width`` an int or (N,) per-env K; optional context ``ctx_tokens`` (N, C, 36),
    ``ctx_actions`` (N, C), ``ctx_valid`` (N, C) bool (False = left padding of a short history).
    Call with the model in eval mode.

    ``shared_prefix`` (default): every environment's context is run once and shared by all its
    beams and children (`_SharedContext`); False copies the context into every row
    (`_CopiedContext`, the previous planner: same actions and trees, scores equal up to fp32
    rounding; kept as a reference). ``profile``: a `SearchProfile` that accumulates the time of
    each phase of this call.
    """
    if model.training:
        raise ValueError("beam_search needs the model in eval mode (model.eval()): the search applies no dropout")
    if profile is None:
        return _beam_search(model, obs_tokens, game_id, valid_mask, horizon, beam_width, gamma, ctx_tokens,
                            ctx_actions, ctx_valid, return_tree, shared_prefix, _NO_CLOCK)
    with profile._search(obs_tokens.device):
        return _beam_search(model, obs_tokens, game_id, valid_mask, horizon, beam_width, gamma, ctx_tokens,
                            ctx_actions, ctx_valid, return_tree, shared_prefix, profile)


def _beam_search(
    model: WorldActionModel, obs_tokens: Tensor, game_id: Tensor, valid_mask: Tensor, horizon: int,
    beam_width: int | Tensor, gamma: float, ctx_tokens: Tensor | None, ctx_actions: Tensor | None,
    ctx_valid: Tensor | None, return_tree: bool, shared_prefix: bool, clock: SearchProfile | _NoClock,
) -> PlanResult:
    N = obs_tokens.shape[0]
    dev = obs_tokens.device
    valid_mask = valid_mask.bool().to(dev)
    game_id = game_id.long().to(dev)
    k_env = torch.as_tensor(beam_width, device=dev).long().expand(N).clamp(min=1)
    k_max = int(k_env.max()) if N else 1
    if k_max > MAX_ACTIONS:
        raise ValueError(f"beam_width must be <= {MAX_ACTIONS}, got {k_max}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    C = 0 if ctx_tokens is None else ctx_tokens.shape[1]
    capacity = C * TOKENS_PER_STEP + TOKENS_PER_FRAME + horizon * TOKENS_PER_STEP
    if capacity > model.gpt.cfg.max_tokens:
        raise ValueError(
            f"{C} context steps + current frame + horizon {horizon} need {capacity} tokens > "
            f"{model.gpt.cfg.max_tokens}; use at most {max_context_steps(model, horizon)} context steps"
        )
    with clock.phase("prefix"):
        # The shared prefix needs no room after the context; the copied one carries the search.
        cache, h0 = _prefix(model, obs_tokens, game_id, ctx_tokens, ctx_actions, ctx_valid,
                            None if shared_prefix else capacity)
        logp0 = model.q_head(h0)  # (N, 18, atoms) log-probabilities
        q0 = model.q_values(logp0, valid_mask)  # (N, 18)
        probs0 = logp0.float().exp()
        greedy = masked_argmax(q0, valid_mask)
    if horizon == 0 or k_max == 1:
        trees = _greedy_trees(q0, greedy) if return_tree else None
        return PlanResult(greedy, q0, trees, probs0)
    ctx = _SharedContext.start(model, cache) if shared_prefix else _CopiedContext(model, cache)

    # Beam state, (N, B) with B = 1 at the root.
    q_cur = q0[:, None]
    G = torch.zeros(N, 1, device=dev)
    alive = torch.ones(N, 1, dtype=torch.bool, device=dev)
    beam_ok = torch.ones(N, 1, dtype=torch.bool, device=dev)
    first = torch.zeros(N, 1, dtype=torch.long, device=dev)
    log: list[dict[str, Tensor]] | None = [] if return_tree else None
    # The path of each beam (only with return_tree): actions, imagined tokens, validity per depth.
    p_act = torch.zeros(N, 1, 0, dtype=torch.long, device=dev)
    p_tok = torch.zeros(N, 1, 0, TOKENS_PER_FRAME, dtype=torch.long, device=dev)
    p_ok = torch.zeros(N, 1, 0, dtype=torch.bool, device=dev)
    p_rew = torch.zeros(N, 1, 0, device=dev)
    p_term = torch.zeros(N, 1, 0, dtype=torch.bool, device=dev)
    env = torch.arange(N, device=dev)
    for depth in range(horizon):
        B = q_cur.shape[1]
        acts, q_edge, ok = _expand(q_cur, alive, beam_ok, k_env, k_max)  # (N, B, k)
        rows = ctx.children(k_max)
        g_rows = game_id.repeat_interleave(B * k_max)
        vm_rows = valid_mask.repeat_interleave(B * k_max, dim=0)
        reward, terminal, q_next, tok = _imagine_step(model, rows, acts.flatten(), g_rows, vm_rows, clock)
        reward, terminal = reward.view(N, B, k_max), terminal.view(N, B, k_max)
        q_next = q_next.view(N, B, k_max, MAX_ACTIONS)
        G_c, alive_c, score = _score_children(G[..., None], alive[..., None], reward, terminal, q_next, depth, gamma)
        score = score.masked_fill(~ok, float("-inf"))
        first_c = acts if depth == 0 else first[..., None].expand(N, B, k_max)
        if log is not None:  # extend every beam's path by its children's step
            live = alive[..., None].expand(N, B, k_max)
            p_act_c = _flat(torch.cat([_grow(p_act, k_max), torch.where(live, acts, -1)[..., None]], -1))
            p_tok_c = _flat(torch.cat([_grow(p_tok, k_max), tok.view(N, B, k_max, 1, TOKENS_PER_FRAME)], -2))
            p_ok_c = _flat(torch.cat([_grow(p_ok, k_max), alive_c[..., None]], -1))
            p_rew_c = _flat(torch.cat([_grow(p_rew, k_max), torch.where(live, reward, 0.0)[..., None]], -1))
            p_term_c = _flat(torch.cat([_grow(p_term, k_max), (live & terminal)[..., None]], -1))
        keep_n = min(k_max, B * k_max)
        top_score, top_idx = _flat(score).topk(keep_n, dim=-1)  # (N, keep)
        new_ok = torch.isfinite(top_score) & (torch.arange(keep_n, device=dev) < k_env[:, None])
        if log is not None:
            kept = torch.zeros(N, B * k_max, dtype=torch.bool, device=dev)
            kept.scatter_(1, top_idx, new_ok)
            log.append({k: v.cpu() for k, v in dict(
                acts=_flat(acts), q_edge=_flat(q_edge), ok=_flat(ok), reward=_flat(reward), score=_flat(score),
                terminal=_flat(terminal & alive[..., None]), carry=_flat(~alive[..., None].expand(N, B, k_max)),
                kept=kept, top_idx=top_idx,
            ).items()})
        if depth == horizon - 1:
            best = _flat(score).argmax(-1)
            actions = _flat(first_c).gather(1, best[:, None])[:, 0]
            if log is not None:
                p_act, p_tok, p_ok, p_rew, p_term = (
                    x[env, best] for x in (p_act_c, p_tok_c, p_ok_c, p_rew_c, p_term_c))
            break
        if log is not None:
            p_act, p_tok, p_ok, p_rew, p_term = (
                x[env[:, None], top_idx] for x in (p_act_c, p_tok_c, p_ok_c, p_rew_c, p_term_c))
        G, alive, first = (_flat(x).gather(1, top_idx) for x in (G_c, alive_c, first_c))
        beam_ok = new_ok
        q_cur = _flat(q_next)[env[:, None], top_idx]
        ctx = rows.select((torch.arange(N, device=dev)[:, None] * (B * k_max) + top_idx).flatten())
    if log is None:
        return PlanResult(actions, q0, None, probs0)
    return PlanResult(actions, q0, _build_trees(q0, log, actions), probs0, p_act, p_tok, p_ok, p_rew, p_term)


def _flat(x: Tensor) -> Tensor:
    """(N, B, k, ...) children of B beams -> (N, B * k, ...), beam-major."""
    return x.flatten(1, 2)


def _grow(x: Tensor, k: int) -> Tensor:
    """(N, B, ...) per beam -> (N, B, k, ...), repeated for each of its k children."""
    return x[:, :, None].expand(x.shape[0], x.shape[1], k, *x.shape[2:])


def _greedy_trees(q0: Tensor, greedy: Tensor) -> list[SearchTree]:
    trees = []
    for i in range(q0.shape[0]):
        a, q = int(greedy[i]), float(q0[i].max())
        root = SearchNode(0, -1, 0, -1, 0.0, q, q, True, False)
        child = SearchNode(1, 0, 1, a, 0.0, float(q0[i, a]), float(q0[i, a]), True, False)
        trees.append(SearchTree([root, child], a))
    return trees


def _build_trees(q0: Tensor, log: list[dict[str, Tensor]], actions: Tensor) -> list[SearchTree]:
    """Assemble per-env node lists from the per-depth logs (only when a tree is asked for)."""
    trees = []
    for i in range(q0.shape[0]):
        qmax = float(q0[i].max())
        nodes = [SearchNode(0, -1, 0, -1, 0.0, qmax, qmax, True, False)]
        beam_nodes = [0]  # node id of each current beam
        for depth, d in enumerate(log):
            n_children = d["acts"].shape[1]
            k = n_children // len(beam_nodes)
            child_nodes = []
            for c in range(n_children):
                parent = beam_nodes[c // k] if c // k < len(beam_nodes) else -1
                if not bool(d["ok"][i, c]) or parent < 0:
                    child_nodes.append(-1)
                elif bool(d["carry"][i, c]):
                    child_nodes.append(parent)  # a terminated path carries its node unchanged
                else:
                    node = SearchNode(
                        len(nodes), parent, depth + 1, int(d["acts"][i, c]), float(d["reward"][i, c]),
                        float(d["q_edge"][i, c]), float(d["score"][i, c]), bool(d["kept"][i, c]),
                        bool(d["terminal"][i, c]),
                    )
                    nodes.append(node)
                    child_nodes.append(node.id)
            beam_nodes = [child_nodes[int(j)] if bool(d["kept"][i, int(j)]) else -1 for j in d["top_idx"][i]]
        trees.append(SearchTree(nodes, int(actions[i])))
    return trees


# ----------------------------------------------------------------------------- reference

@torch.no_grad()
def beam_search_sequential(
    model: WorldActionModel,
    obs_tokens: Tensor,
    game_id: Tensor,
    valid_mask: Tensor,
    horizon: int,
    beam_width: int | Tensor,
    gamma: float = 0.99,
    ctx_tokens: Tensor | None = None,
    ctx_actions: Tensor | None = None,
    ctx_valid: Tensor | None = None,
) -> Tensor:
    """The same search written plainly: one environment and one child at a time, each child on
    its own copy of the cache, in Python lists. An independent reference for tests; returns (N,).

    (Not a model of the public implementation's speed, which batches the children of a depth:
    `benchmarks/bench_planner.py` has that baseline.)"""
    N = obs_tokens.shape[0]
    dev = obs_tokens.device
    k_env = torch.as_tensor(beam_width, device=dev).long().expand(N).clamp(min=1)
    out = torch.empty(N, dtype=torch.long)
    for i in range(N):
        sl = slice(i, i + 1)
        C = 0 if ctx_tokens is None else ctx_tokens.shape[1]
        capacity = C * TOKENS_PER_STEP + TOKENS_PER_FRAME + horizon * TOKENS_PER_STEP
        g, vm, K = game_id[sl].long(), valid_mask[sl].bool(), int(k_env[i])
        root, h0 = _prefix(
            model, obs_tokens[sl], g, None if ctx_tokens is None else ctx_tokens[sl],
            None if ctx_actions is None else ctx_actions[sl], None if ctx_valid is None else ctx_valid[sl], capacity,
        )
        q0 = _masked_q(model, h0, vm)[0]
        if horizon == 0 or K == 1:
            out[i] = int(masked_argmax(q0[None], vm)[0])
            continue
        # beam: (cache, q, G, alive, first_action)
        beams = [(root, q0, 0.0, True, -1)]
        for depth in range(horizon):
            children = []
            for cache, q, G, alive, first in beams:
                top_q, top_a = q.topk(K)
                if not alive:  # terminated path: carried, not expanded
                    children.append((cache, q, G, False, first, G))
                    continue
                for a, qa in zip(top_a.tolist(), top_q.tolist()):
                    if not np.isfinite(qa):
                        continue
                    child = cache.clone()
                    r, term, q_next, _ = _imagine_step(
                        model, _CopiedContext(model, child), torch.tensor([a], device=dev), g, vm)
                    G_c = G + gamma ** depth * float(r[0])
                    alive_c = not bool(term[0])
                    score = G_c + gamma ** (depth + 1) * float(q_next[0].max()) if alive_c else G_c
                    children.append((child, q_next[0], G_c, alive_c, a if depth == 0 else first, score))
            order = sorted(range(len(children)), key=lambda j: -children[j][5])
            if depth == horizon - 1:
                out[i] = children[order[0]][4]
                break
            beams = [children[j][:5] for j in order[:K]]
    return out


# ----------------------------------------------------------------------------- policy

def _tree_to_minimal(tree: SearchTree, to_minimal: Tensor) -> SearchTree:
    """A tree whose node actions (ALE ids) are replaced by the game's minimal indices."""
    def m(a: int) -> int:
        return int(to_minimal[a]) if a >= 0 else a

    nodes = [SearchNode(n.id, n.parent, n.depth, m(n.action), n.reward, n.q, n.score, n.kept, n.terminal)
             for n in tree.nodes]
    return SearchTree(nodes, m(tree.chosen_action))


class PlannerPolicy:
    """Policy (docs/architecture.md) that plans with beam search over the world model.

    Keeps, per environment, the last ``context_steps`` (tokens, action) steps of the current
    episode as the model's context; ``reset(indices)`` clears them. ``act`` tokenizes the newest
    frame of each stack, plans, appends the step with the chosen action to the context and
    returns it; ``observe(actions, rewards)`` then replaces that action by the one the
    environment executed (the caller's epsilon may have changed it), so the context holds what
    the agent did, not what it planned. ``games`` is the run's ordered game tuple (names) or
    (tests) the size n of each game's minimal set, standing for ALE ids 0..n-1.

    Actions in and out are minimal-set indices; inside, the model and the search use the 18 ALE
    actions (`ActionSpace`). ``beam_width`` may be
    one int or one per game_id (Table 16). ``last_trees`` holds the trees of the last call when
    ``return_tree`` is set. Environment i is row i of every ``act`` call; a call with a different
    number of environments starts every context afresh. ``context_steps`` defaults to the most
    that fit: ``max_steps - 1 - horizon`` (5 for H = 2).

    What the last ``act`` saw and imagined (for inspectors; nothing here costs a forward pass):

    - ``last_root_probs``: float32 numpy (N, 18, atoms), the C51 probabilities at each root
      (the distributions ``root_q`` is the expectation of), on the atoms ``support`` (atoms,);
      slot i is minimal action i of the env's game (`ActionSpace.slot_order`);
    - with ``return_tree`` and a real search (H >= 1, K >= 2): ``last_trees`` (node actions are
      minimal indices), ``last_path_actions`` int64 (N, H) minimal indices (-1 after a predicted
      end), ``last_predicted_tokens``
      int64 (N, H, 36), the greedily decoded next-frame tokens along the chosen (best) path, and
      ``last_predicted_valid`` bool (N, H); otherwise these are None. Frames are decoded only on
      request, by :meth:`decode_predicted_frames`.
    """

    def __init__(
        self, model: WorldActionModel, tokenizer: Tokenizer, games: Sequence[str] | Sequence[int],
        horizon: int = 2, beam_width: int | Sequence[int] = 2, context_steps: int | None = None,
        gamma: float = 0.99, return_tree: bool = False,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.actions = ActionSpace(games)
        self.valid_table = self.actions.valid  # (G, 18): the ALE actions of each game
        if len(self.valid_table) != model.cfg.num_games:
            raise ValueError(f"{len(self.valid_table)} games but the model has {model.cfg.num_games} task embeddings")
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        limit = max_context_steps(model, horizon)
        if limit < 0:
            raise ValueError(
                f"horizon {horizon} does not fit in {model.cfg.max_steps} steps; max horizon {model.cfg.max_steps - 1}"
            )
        self.context_steps = limit if context_steps is None else context_steps
        if not 0 <= self.context_steps <= limit:
            raise ValueError(f"context_steps must be in [0, {limit}] for horizon {horizon}, got {context_steps}")
        bw = torch.as_tensor(beam_width).long()
        if bw.dim() == 1 and len(bw) != len(self.valid_table):
            raise ValueError(f"beam_width per game needs {len(self.valid_table)} entries, got {len(bw)}")
        if bool((bw < 1).any()):
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.beam_width, self.horizon, self.gamma, self.return_tree = bw, horizon, gamma, return_tree
        self.last_trees: list[SearchTree] | None = None
        self.last_root_probs: np.ndarray | None = None
        self.last_path_actions: np.ndarray | None = None
        self.last_predicted_tokens: np.ndarray | None = None
        self.last_predicted_valid: np.ndarray | None = None
        # tokens (N,C,36), ALE actions (N,C), valid (N,C); the newest step is column -1.
        self._ctx: tuple[Tensor, Tensor, Tensor] | None = None
        self._last_game_ids: np.ndarray | None = None  # game ids of the last act, until observed

    def reset(self, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Forget the context of environments ``indices`` (all when None)."""
        if self._ctx is None:
            return
        if indices is None:
            self._ctx = None
            return
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).to(self._ctx[2].device)
        with torch.inference_mode():  # the context tensors are inference tensors
            self._ctx[2][idx] = False

    def _inputs(self, obs: np.ndarray, game_ids: np.ndarray, device: torch.device):
        """(current tokens, game ids, context tokens, actions, valid) for ``obs``; call in inference mode."""
        if obs.dtype != np.uint8 or obs.ndim != 4:
            raise TypeError(f"obs must be uint8 (N, 4, 84, 84), got {obs.dtype} {obs.shape}")
        frames = torch.from_numpy(np.ascontiguousarray(obs[:, -1])).to(device)
        g = torch.from_numpy(np.asarray(game_ids, dtype=np.int64)).to(device)
        tokens = self.tokenizer.encode(frames)
        N, C = tokens.shape[0], self.context_steps
        if self._ctx is None or self._ctx[0].shape[0] != N or self._ctx[0].device != device:
            self._ctx = (
                torch.zeros(N, C, TOKENS_PER_FRAME, dtype=torch.long, device=device),
                torch.zeros(N, C, dtype=torch.long, device=device),
                torch.zeros(N, C, dtype=torch.bool, device=device),
            )
        ctx_t, ctx_a, ctx_v = self._ctx
        # Drop leading all-padding columns so short histories cost nothing.
        first = int(ctx_v.any(0).float().argmax()) if bool(ctx_v.any()) else C
        return tokens, g, ctx_t[:, first:], ctx_a[:, first:], ctx_v[:, first:]

    def _run(self, fn):
        device = next(self.model.parameters()).device
        was = (self.model.training, self.tokenizer.training)
        self.model.eval(), self.tokenizer.eval()
        try:
            amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
            with torch.inference_mode(), amp:
                return fn(device)
        finally:
            self.model.train(was[0]), self.tokenizer.train(was[1])

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """The minimal-set actions the environments executed after the last ``act`` (and their
        raw rewards, which JOWA's context does not hold): they replace the planned actions of the
        newest context step."""
        game_ids = self._last_game_ids
        if game_ids is None:
            raise RuntimeError("observe() needs a preceding act(): it reports what that act's step executed")
        executed = np.asarray(actions)
        if executed.shape != game_ids.shape or np.asarray(rewards).shape != game_ids.shape:
            raise ValueError(f"observe() needs one action and one reward per environment of the last act "
                             f"({game_ids.shape[0]}), got {executed.shape} and {np.asarray(rewards).shape}")
        self._last_game_ids = None
        if self.context_steps == 0 or self._ctx is None:
            return
        full = self.actions.full(torch.from_numpy(executed.astype(np.int64)), torch.from_numpy(game_ids))
        with torch.inference_mode():  # the context tensors are inference tensors
            self._ctx[1][:, -1] = full.to(self._ctx[1].device)

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        def plan(device: torch.device) -> np.ndarray:
            tokens, g, ctx_t, ctx_a, ctx_v = self._inputs(obs, game_ids, device)
            bw = self.beam_width.to(device)
            result = beam_search(
                self.model, tokens, g, self.valid_table.to(device)[g], self.horizon,
                bw[g] if bw.dim() == 1 else bw, self.gamma, ctx_t, ctx_a, ctx_v, return_tree=self.return_tree,
            )
            if self.context_steps > 0:  # shift the new step in on the right (histories are left-padded)
                assert self._ctx is not None  # _inputs set it
                old_t, old_a, old_v = self._ctx
                N = tokens.shape[0]
                self._ctx = (
                    torch.cat([old_t[:, 1:], tokens[:, None]], 1),
                    torch.cat([old_a[:, 1:], result.actions[:, None]], 1),
                    torch.cat([old_v[:, 1:], torch.ones(N, 1, dtype=torch.bool, device=device)], 1),
                )
            # Back to each game's minimal indices: actions, trees, path and root distributions.
            gc = g.cpu()
            to_min = self.actions.to_minimal[gc]  # (N, 18)
            chosen = to_min.gather(1, result.actions.cpu()[:, None])[:, 0]
            self.last_trees = None if result.trees is None else [
                _tree_to_minimal(t, to_min[i]) for i, t in enumerate(result.trees)]
            assert result.root_probs is not None  # beam_search always reports them
            self.last_root_probs = self._to_slots(result.root_probs, gc)
            self.last_path_actions = None
            if result.path_actions is not None:
                p = result.path_actions.cpu()
                self.last_path_actions = torch.where(p >= 0, to_min.gather(1, p.clamp(min=0)), -1).numpy()
            path = (result.path_tokens, result.path_valid)
            tokens_valid = [None if t is None else t.cpu().numpy() for t in path]
            self.last_predicted_tokens, self.last_predicted_valid = tokens_valid
            self._last_game_ids = np.asarray(game_ids, dtype=np.int64).copy()
            return chosen.numpy().astype(np.int64)

        return self._run(plan)

    def _to_slots(self, probs: Tensor, game_ids: Tensor) -> np.ndarray:
        """(N, 18, atoms) per ALE action -> float32 numpy per minimal slot of each env's game."""
        order = self.actions.slot_order[game_ids.cpu()]  # (N, 18)
        p = probs.float().cpu()
        return p.gather(1, order[:, :, None].expand(-1, -1, p.shape[-1])).numpy()

    @property
    def support(self) -> np.ndarray:
        """float32 (atoms,): the C51 atom values of ``last_root_probs`` and ``q_distribution``."""
        return self.model.support.float().cpu().numpy()

    def decode_predicted_frames(self) -> np.ndarray | None:
        """The last ``act``'s imagined frames along the chosen path, decoded by the tokenizer:
        uint8 (N, H, 84, 84) (black where ``last_predicted_valid`` is False), or None when that
        call recorded no path (``return_tree`` off, or H = 0 or K = 1)."""
        if self.last_predicted_tokens is None:
            return None
        tokens, valid = self.last_predicted_tokens, self.last_predicted_valid
        assert valid is not None  # recorded together with the tokens

        def decode(device: torch.device) -> np.ndarray:
            out = np.zeros(tokens.shape[:2] + (FRAME_SIZE, FRAME_SIZE), np.uint8)
            if valid.any():
                frames = self.tokenizer.decode(torch.from_numpy(tokens[valid]).to(device)).float()
                out[valid] = (frames * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            return out

        return self._run(decode)

    def q_distribution(self, obs: np.ndarray, game_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return distributions at the current states given each env's context, without acting
        (for inspectors): (probs (N, 18, atoms), slot i = minimal action i, support (atoms,))."""
        def dist(device: torch.device):
            tokens, g, ctx_t, ctx_a, ctx_v = self._inputs(obs, game_ids, device)
            capacity = ctx_t.shape[1] * TOKENS_PER_STEP + TOKENS_PER_FRAME
            _, h = _prefix(self.model, tokens, g, ctx_t, ctx_a, ctx_v, capacity)
            probs = self.model.q_head(h).float().exp()
            return self._to_slots(probs, g), self.model.support.cpu().numpy()

        return self._run(dist)

"""JOWA's world-action model: a GPT over interleaved observation and action tokens with world
heads (next observation token, reward sign, termination) and a distributional Q head.

Sequence layout (paper Sec. 4.1.1): step t contributes its 36 observation tokens, then its action
token; 8 steps make the 296-token context. Every token's input embedding is
``vocab/action embedding + learned position embedding + task embedding[game_id]``, with one
task table for observation tokens and one for action tokens.

Where each head reads the transformer output (index p = position in the sequence):

- next observation token: p predicts the token at p + 1 whenever that is an observation token
  (the action token of step t predicts the first token of step t + 1; token k of a frame predicts
  token k + 1), Eq. 5;
- reward sign (3 classes for -1, 0, +1) and termination (2 classes): at step t's action token,
  i.e. after seeing o_<=t and a_<=t (Eqs. 6-7);
- Q (C51, 51 atoms on [-10, 30]): at the *last observation token* of step t, i.e. after o_<=t and
  a_<t (Eq. 9); (..., 18, 51) outputs, one slot per ALE action; the slots of buttons the game's
  minimal set lacks are masked by the consumer with ``valid_mask``. An ensemble of n heads is
  averaged in probability and returned as log-probabilities (valid logits: softmax gives back
  the mixture).

Actions (paper Sec. 4.1): the action embedding, the Q head's slots and ``valid_mask`` all index
the full set of 18 ALE actions shared by every game, so one row means the same button (UP,
RIGHTFIRE, ...) in every game. Datasets and environments use each game's minimal-set indices;
:class:`ActionSpace` maps between the two at JOWA's boundary (``algos/jowa.py`` for batches,
``planner.PlannerPolicy`` for acting).

The target Q head is a frozen copy of the Q head(s) only, refreshed by ``update_target()``. It
reads the *online* backbone's features at o_{t+1} (detached, no grad), as the paper copies only
the head ("target Q-values head"). It never uses dropout (it is kept in eval mode).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.games import MAX_ACTIONS, minimal_action_set
from workbench.losses import c51_target, cql_loss, distributional_td_loss, expected_q
from workbench.models.gpt import GPT, GPTConfig, KVCache
from workbench.models.ref_tokenizer import RefTokenizerConfig
from workbench.models.tokenizer import TOKENIZER_PRESETS, TOKENS_PER_FRAME, Tokenizer, TokenizerConfig

TOKENS_PER_STEP = TOKENS_PER_FRAME + 1  # 36 observation tokens + 1 action token
MAX_STEPS = 8  # 8 * 37 = 296 tokens (Table 9)


@dataclass(frozen=True)
class WorldActionConfig:
    """World-action model hyperparameters (Tables 9-11) plus its tokenizer's."""

    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1
    max_steps: int = MAX_STEPS
    vocab_size: int = 2048
    num_games: int = 15
    """Task-embedding rows; the algo sets it to the run's number of games."""
    q_layers: int = 3
    """Q-head MLP layers: (q_layers - 1) x [Linear, Dropout, LayerNorm, Mish] + output Linear."""
    q_hidden: int = 768
    q_heads: int = 1
    """Ensemble size; distributions are averaged with equal weights."""
    q_dropout: float = 0.01
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 30.0
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        if self.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"vocab_size {self.vocab_size} != tokenizer vocab_size {self.tokenizer.vocab_size}")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in [1, {MAX_STEPS}], got {self.max_steps}")
        if self.q_layers < 2 or self.q_heads < 1 or self.num_games < 1:
            raise ValueError("need q_layers >= 2, q_heads >= 1 and num_games >= 1")

    @property
    def gpt(self) -> GPTConfig:
        return GPTConfig(
            n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            max_tokens=self.max_steps * TOKENS_PER_STEP, dropout=self.dropout,
        )


PRESETS: dict[str, WorldActionConfig] = {
    "jowa-40m": WorldActionConfig(n_layer=4, n_embd=512, n_head=8, q_hidden=768, q_heads=1),
    "jowa-70m": WorldActionConfig(n_layer=6, n_embd=768, n_head=12, q_hidden=1024, q_heads=1),
    "jowa-150m": WorldActionConfig(n_layer=12, n_embd=768, n_head=12, q_hidden=1792, q_heads=3),
    "jowa-tiny": WorldActionConfig(
        n_layer=2, n_embd=64, n_head=4, q_hidden=64, q_heads=1, tokenizer=TOKENIZER_PRESETS["tiny"]
    ),
}
"""Tables 10-11 (the paper's three sizes) and a CPU smoke size."""
PRESETS.update({f"{name}-ref": replace(PRESETS[name], tokenizer=RefTokenizerConfig())
                for name in ("jowa-40m", "jowa-70m", "jowa-150m")})
"""The three sizes with the reference code's tokenizer (``models.ref_tokenizer``): the models the
released JOWA checkpoints convert to (``python -m workbench.convert jowa``)."""

PAPER_PARAMS = {"jowa-40m": 37.87e6, "jowa-70m": 72.11e6, "jowa-150m": 146.54e6}
"""Table 10's 'Params' column. Our backbone + world heads + Q heads + target Q heads + tokenizer
fall short of it by the same ~15.1M for all three sizes (15.07M, 15.10M, 15.10M): a constant,
size-independent gap, which the frozen VGG16 of the LPIPS perceptual loss (14.71M) plus a
~0.4M larger tokenizer would explain; i.e. Table 10 most likely counts everything in the
checkpoint, target head and perceptual network included."""


def world_action_config(name: str, **overrides) -> WorldActionConfig:
    """Preset by name, optionally with field overrides (e.g. ``num_games=15``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown JOWA model preset {name!r}; valid: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class ActionSpace:
    """The games' minimal action sets inside JOWA's 18-action space.

    ``games``: the run's ordered game names, or (tests) the size n of each game's minimal set,
    which then stands for ALE ids ``0..n-1``. Tables, each ``(G, 18)`` int64 or bool:

    - ``to_full[g, i]``: ALE id of minimal action i of game g (-1 past the minimal set);
    - ``to_minimal[g, a]``: minimal index of ALE action a in game g (-1 when the game lacks it);
    - ``valid[g, a]``: the game's minimal set contains ALE action a (JOWA's ``valid_mask``);
    - ``slot_order[g]``: a permutation of the 18 ALE ids, the minimal set in minimal order first,
      then the other ids ascending. ``x[..., slot_order[g]]`` turns per-ALE-action outputs into
      the policy contract's per-minimal-action slots (slot i = minimal action i; slots
      ``>= num_actions`` hold the game's invalid buttons).
    """

    def __init__(self, games: Sequence[str] | Sequence[int]) -> None:
        sets = [tuple(range(int(g))) if isinstance(g, (int, np.integer)) else minimal_action_set(str(g))
                for g in games]
        G = len(sets)
        self.num_actions = torch.tensor([len(s) for s in sets], dtype=torch.long)
        self.to_full = torch.full((G, MAX_ACTIONS), -1, dtype=torch.long)
        self.to_minimal = torch.full((G, MAX_ACTIONS), -1, dtype=torch.long)
        self.slot_order = torch.empty((G, MAX_ACTIONS), dtype=torch.long)
        for g, ids in enumerate(sets):
            if not 1 <= len(ids) <= MAX_ACTIONS or len(set(ids)) != len(ids):
                raise ValueError(f"game {games[g]!r}: a minimal set needs 1..{MAX_ACTIONS} distinct actions")
            self.to_full[g, : len(ids)] = torch.tensor(ids)
            self.to_minimal[g, list(ids)] = torch.arange(len(ids))
            rest = [a for a in range(MAX_ACTIONS) if a not in ids]
            self.slot_order[g] = torch.tensor(list(ids) + rest)
        self.valid = self.to_minimal >= 0
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.num_actions)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(to_full, valid) on ``device``, copied there once."""
        if device not in self._tables:
            self._tables[device] = (self.to_full.to(device), self.valid.to(device))
        return self._tables[device]

    def full(self, actions: torch.Tensor, game_id: torch.Tensor) -> torch.Tensor:
        """ALE ids of minimal-set ``actions`` ``(B,)`` or ``(B, L)`` of the games ``game_id`` ``(B,)``.

        An index outside its game's minimal set is an error (checked without a device sync on an
        accelerator, where it fails at the next synchronisation)."""
        to_full, _ = self._on(actions.device)
        g = game_id.long().view(-1, *([1] * (actions.dim() - 1))).expand_as(actions)
        a = actions.long()
        inside = (a >= 0) & (a < MAX_ACTIONS)
        out = torch.where(inside, to_full[g, a.clamp(0, MAX_ACTIONS - 1)], -1)
        if out.device.type == "cpu":
            if bool((out < 0).any()):
                i = tuple(int(x) for x in (out < 0).nonzero()[0])
                n = int(self.num_actions[int(g[i])])
                raise ValueError(f"action {int(a[i])} of game_id {int(g[i])} is outside its minimal set 0..{n - 1}")
        else:
            torch._assert_async((out >= 0).all(), "an action is outside its game's minimal set")
        return out

    def valid_mask(self, game_id: torch.Tensor) -> torch.Tensor:
        """Bool ``(B, 18)``: which ALE actions the minimal set of each game ``game_id`` contains."""
        return self._on(game_id.device)[1][game_id.long()]


def _mlp2(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """The 2-layer MLP of the world heads (paper E.1.1)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


class QHead(nn.Module):
    """Ensemble of C51 MLP heads (Hansen et al. 2024 style: Linear, Dropout, LayerNorm, Mish).

    ``forward(h (..., D)) -> (..., 18, atoms)`` log-probabilities of the equal-weight mixture.
    """

    def __init__(self, cfg: WorldActionConfig) -> None:
        super().__init__()
        self.num_atoms = cfg.num_atoms
        heads = []
        for _ in range(cfg.q_heads):
            layers: list[nn.Module] = []
            d = cfg.n_embd
            for i in range(cfg.q_layers - 1):
                layers += [nn.Linear(d, cfg.q_hidden)]
                if i == 0 and cfg.q_dropout > 0:  # dropout on the first layer, as in TD-MPC2
                    layers.append(nn.Dropout(cfg.q_dropout))
                layers += [nn.LayerNorm(cfg.q_hidden), nn.Mish()]
                d = cfg.q_hidden
            layers.append(nn.Linear(d, MAX_ACTIONS * cfg.num_atoms))
            heads.append(nn.Sequential(*layers))
        self.heads = nn.ModuleList(heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = (*h.shape[:-1], MAX_ACTIONS, self.num_atoms)
        logps = [F.log_softmax(head(h).float().view(shape), dim=-1) for head in self.heads]
        if len(logps) == 1:
            return logps[0]
        # log(mean_h p_h) computed stably from log-probabilities.
        return torch.logsumexp(torch.stack(logps), dim=0) - torch.log(torch.tensor(float(len(logps))))


class _FrozenCopy(nn.Module):
    """Holds a frozen copy of a module, always in eval mode (no dropout in TD targets)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> _FrozenCopy:
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class WorldActionModel(nn.Module):
    """Transformer backbone + world heads + Q head(s) + target Q head(s). See module docstring."""

    support: torch.Tensor  # buffers, registered in __init__
    action_pattern: torch.Tensor

    def __init__(self, cfg: WorldActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.n_embd
        self.obs_emb = nn.Embedding(cfg.vocab_size, D)
        self.act_emb = nn.Embedding(MAX_ACTIONS, D)
        self.task_obs_emb = nn.Embedding(cfg.num_games, D)
        self.task_act_emb = nn.Embedding(cfg.num_games, D)
        for emb in (self.obs_emb, self.act_emb, self.task_obs_emb, self.task_act_emb):
            nn.init.normal_(emb.weight, std=0.02)
        self.gpt = GPT(cfg.gpt)
        self.obs_head = _mlp2(D, D, cfg.vocab_size)
        self.reward_head = _mlp2(D, D, 3)
        self.term_head = _mlp2(D, D, 2)
        self.q_head = QHead(cfg)
        self.target_q_head = _FrozenCopy(self.q_head)
        self.register_buffer("support", torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms), persistent=False)
        pattern = torch.zeros(cfg.max_steps, TOKENS_PER_STEP, dtype=torch.bool)
        pattern[:, -1] = True
        self.register_buffer("action_pattern", pattern.flatten(), persistent=False)

    # -- core -----------------------------------------------------------------------------
    def forward_tokens(
        self, tokens: torch.Tensor, is_action: torch.Tensor, game_id: torch.Tensor,
        cache: KVCache | None = None, valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, T, D)`` of a token chunk.

        ``tokens`` ``(B, T)`` int (observation ids or ALE action ids), ``is_action``
        ``(B, T)`` or ``(T,)`` bool, ``game_id`` ``(B,)``; ``cache``/``valid`` as in `GPT.forward`.
        """
        tokens = tokens.long()
        is_action = is_action.expand_as(tokens)
        g = game_id.long()[:, None]
        obs = self.obs_emb(tokens.clamp(0, self.cfg.vocab_size - 1)) + self.task_obs_emb(g)
        act = self.act_emb(tokens.clamp(0, MAX_ACTIONS - 1)) + self.task_act_emb(g)
        x = torch.where(is_action[..., None], act, obs)
        return self.gpt(x, cache=cache, valid=valid)

    def interleave(self, obs_tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``(B, L, 36)`` tokens + ``(B, L)`` ALE action ids -> ``(B, L * 37)`` sequence."""
        B, L, _ = obs_tokens.shape
        return torch.cat([obs_tokens.long(), actions.long()[..., None]], dim=-1).view(B, L * TOKENS_PER_STEP)

    def forward(
        self, obs_tokens: torch.Tensor, actions: torch.Tensor, game_id: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Full-sequence pass (training) over ALE action ids ``actions`` (B, L). Returns:

        ``obs_logits`` (B, L*37 - 1, vocab): position p's prediction of token p + 1;
        ``reward_logits`` (B, L, 3); ``term_logits`` (B, L, 2); ``q_logits`` (B, L, 18, atoms)
        at each step's last observation token; ``features`` (B, L, D) there.
        """
        B, L, K = obs_tokens.shape
        if K != TOKENS_PER_FRAME or L > self.cfg.max_steps:
            raise ValueError(f"obs_tokens must be (B, L<={self.cfg.max_steps}, 36), got {tuple(obs_tokens.shape)}")
        seq = self.interleave(obs_tokens, actions)
        h = self.forward_tokens(seq, self.action_pattern[: seq.shape[1]], game_id)
        hs = h.view(B, L, TOKENS_PER_STEP, -1)
        features = hs[:, :, TOKENS_PER_FRAME - 1]
        return {
            "obs_logits": self.obs_head(h[:, :-1]),
            "reward_logits": self.reward_head(hs[:, :, -1]),
            "term_logits": self.term_head(hs[:, :, -1]),
            "q_logits": self.q_head(features),
            "features": features,
        }

    @torch.no_grad()
    def target_q_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Target head on (detached) online features: (..., D) -> (..., 18, atoms)."""
        return self.target_q_head(features.detach())

    @torch.no_grad()
    def update_target(self) -> None:
        """Copy the online Q head(s) into the target Q head(s)."""
        for t, s in zip(self.target_q_head.module.parameters(), self.q_head.parameters()):
            t.copy_(s)

    def q_values(self, q_logits: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Expected Q (..., 18) from logits; invalid slots set to -inf when ``valid_mask`` is given."""
        q = expected_q(q_logits, self.support)
        if valid_mask is not None:
            q = q.masked_fill(~valid_mask, float("-inf"))
        return q


# -- losses -------------------------------------------------------------------------------

def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.float()
    return (x.float() * w).sum() / w.sum().clamp_min(1.0)


def world_losses(
    out: dict[str, torch.Tensor], obs_tokens: torch.Tensor, actions: torch.Tensor,
    rewards: torch.Tensor, terminals: torch.Tensor, mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 8: next-observation-token CE (mean over predicted tokens) + reward-sign CE + termination
    CE (means over real steps). Padded steps (``mask`` False) and tokens after a terminal step are
    ignored."""
    B, L, K = obs_tokens.shape
    mask = mask.bool()
    seq = torch.cat([obs_tokens.long(), actions.long()[..., None]], dim=-1).view(B, L * TOKENS_PER_STEP)
    target = seq[:, 1:]
    pos = torch.arange(1, L * TOKENS_PER_STEP, device=seq.device)
    step = pos // TOKENS_PER_STEP
    is_obs = (pos % TOKENS_PER_STEP) != TOKENS_PER_FRAME
    after_terminal = torch.zeros_like(mask)
    after_terminal[:, 1:] = terminals[:, :-1] > 0  # the next frame of a terminal step is not its successor
    w_obs = is_obs[None] & mask[:, step] & ~after_terminal[:, step]
    ce_obs = F.cross_entropy(out["obs_logits"].float().flatten(0, 1), target.flatten(), reduction="none").view(B, -1)
    obs_loss = _masked_mean(ce_obs, w_obs)

    reward_cls = (torch.sign(rewards.float()) + 1).long()  # -1, 0, +1 -> 0, 1, 2
    term_cls = (terminals > 0).long()
    ce_r = F.cross_entropy(out["reward_logits"].float().flatten(0, 1), reward_cls.flatten(), reduction="none")
    ce_d = F.cross_entropy(out["term_logits"].float().flatten(0, 1), term_cls.flatten(), reduction="none")
    ce_r, ce_d = ce_r.view(B, L), ce_d.view(B, L)
    reward_loss, term_loss = _masked_mean(ce_r, mask), _masked_mean(ce_d, mask)
    with torch.no_grad():
        acc = _masked_mean((out["obs_logits"].argmax(-1) == target).float(), w_obs)
    loss = obs_loss + reward_loss + term_loss
    metrics = {
        "loss/world": loss.detach(), "world/obs_ce": obs_loss.detach(), "world/reward_ce": reward_loss.detach(),
        "world/term_ce": term_loss.detach(), "world/obs_token_acc": acc,
    }
    return loss, metrics


def action_losses(
    model: WorldActionModel, out: dict[str, torch.Tensor], actions: torch.Tensor, rewards: torch.Tensor,
    terminals: torch.Tensor, mask: torch.Tensor, valid_mask: torch.Tensor,
    gamma: float = 0.99, cql_alpha: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 9: C51 TD (one-step, the paper lists no n-step for JOWA) + alpha * CQL on expected Q.

    ``actions`` are ALE ids and ``valid_mask`` (B, 18) marks the ALE actions of each sample's
    game (`ActionSpace`). TD target of step t: ``clip(r_t) + gamma (1 - d_t) Z_target(o_{t+1}, argmax_valid Q_target)``,
    with Z_target from the target head on the online features at o_{t+1}. A step is a TD sample
    when it is real and its successor is in the segment (or it is terminal); CQL uses every real
    step. Invalid actions are excluded from the argmax and the logsumexp. With an ensemble of
    Q heads both terms act on the equal-weight mixture distribution (what planning uses).
    """
    B, L = actions.shape
    mask, valid_mask, actions = mask.bool(), valid_mask.bool(), actions.long()
    q_logits = out["q_logits"]  # (B, L, 18, N)
    vm = valid_mask[:, None, :].expand(B, L, MAX_ACTIONS)
    q = expected_q(q_logits, model.support)  # (B, L, 18)
    cql = cql_loss(q.flatten(0, 1), actions.flatten(), vm.flatten(0, 1)).view(B, L)
    cql_term = _masked_mean(cql, mask)

    if L > 1:
        target_next = model.target_q_logits(out["features"][:, 1:])  # (B, L-1, 18, N)
        r = rewards[:, :-1].float().clamp(-1.0, 1.0)
        done = terminals[:, :-1].float()
        target_probs = c51_target(
            target_next.flatten(0, 1), r.flatten(), (gamma * (1.0 - done)).flatten(),
            vm[:, 1:].flatten(0, 1), model.support,
        )
        td = distributional_td_loss(q_logits[:, :-1].flatten(0, 1), actions[:, :-1].flatten(), target_probs)
        td = td.view(B, L - 1)
        w_td = mask[:, :-1] & ((done > 0) | mask[:, 1:])
        td_term = _masked_mean(td, w_td)
    else:
        td_term = q_logits.sum() * 0.0
    loss = td_term + cql_alpha * cql_term
    with torch.no_grad():
        q_data = _masked_mean(q.gather(-1, actions[..., None].long()).squeeze(-1), mask)
    metrics = {"loss/action": loss.detach(), "loss/td": td_term.detach(), "loss/cql": cql_term.detach(),
               "q/data_mean": q_data}
    return loss, metrics


# -- parameter accounting -----------------------------------------------------------------

def count_parameters(model: WorldActionModel, tokenizer: Tokenizer | None = None) -> dict[str, int]:
    """Parameter counts by part: backbone (transformer + all embeddings), world heads, Q head(s),
    target Q head(s), tokenizer, and totals with and without the target copy."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    emb = n(model.obs_emb) + n(model.act_emb) + n(model.task_obs_emb) + n(model.task_act_emb)
    counts = {
        "backbone": n(model.gpt) + emb,
        "world_heads": n(model.obs_head) + n(model.reward_head) + n(model.term_head),
        "q_heads": n(model.q_head),
        "target_q_heads": n(model.target_q_head),
        "tokenizer": n(tokenizer) if tokenizer is not None else 0,
    }
    counts["total_trained"] = counts["backbone"] + counts["world_heads"] + counts["q_heads"] + counts["tokenizer"]
    counts["total_with_target"] = counts["total_trained"] + counts["target_q_heads"]
    return counts

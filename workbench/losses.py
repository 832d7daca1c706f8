"""Loss functions of Scaled Q-learning (paper 000) and the Q-part of JOWA (paper 003, Eq. 9).

Pure functions on tensors; every loss returns a **per-sample** tensor (B,) so callers choose the
reduction (mean over the batch = the unitary scalarization of Kurin et al. (2022) across games
under stratified sampling). All maths is done in float32, whatever autocast produced.

Conventions (docs/architecture.md): actions are minimal-set indices; networks emit
``MAX_ACTIONS = 18`` slots and ``valid_mask`` (bool (B, 18)) marks the real ones. Every
argmax / logsumexp / softmax over actions here is restricted to valid slots, so values in invalid
slots never change a loss, a target or a greedy action, and receive zero gradient.
Every row of ``valid_mask`` must contain at least one True (not checked: it would cost a device
sync per step).

``discount`` is ``gamma^n * (1 - terminal)``: zero when the episode ended within the n steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "make_support",
    "expected_q",
    "masked_argmax",
    "masked_max",
    "categorical_projection",
    "c51_target",
    "distributional_td_loss",
    "mse_target",
    "mse_td_loss",
    "scale_rewards",
    "return_scale",
    "cql_loss",
    "combo_terms",
    "bc_loss",
]


def make_support(vmin: float, vmax: float, num_atoms: int, device: torch.device | str | None = None) -> Tensor:
    """Evenly spaced C51 atoms z_0 = vmin < ... < z_{N-1} = vmax (float32, (N,))."""
    if num_atoms < 2 or not vmin < vmax:
        raise ValueError(f"need num_atoms >= 2 and vmin < vmax, got {num_atoms}, [{vmin}, {vmax}]")
    return torch.linspace(vmin, vmax, num_atoms, dtype=torch.float32, device=device)


def expected_q(logits: Tensor, support: Tensor) -> Tensor:
    """Q = sum_i z_i softmax(logits)_i over the last (atom) axis: (..., N) -> (...)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return (probs * support).sum(-1)


def masked_argmax(q: Tensor, valid_mask: Tensor) -> Tensor:
    """Greedy action over valid slots only: (B, A) float, (B, A) bool -> (B,) int64.

    Ties go to the lowest index (torch.argmax's rule), deterministic across devices.
    """
    return q.float().masked_fill(~valid_mask, float("-inf")).argmax(dim=-1)


def masked_max(q: Tensor, valid_mask: Tensor) -> Tensor:
    """max over valid slots: (B, A) -> (B,)."""
    return q.float().masked_fill(~valid_mask, float("-inf")).amax(dim=-1)


def categorical_projection(next_probs: Tensor, rewards: Tensor, discounts: Tensor, support: Tensor) -> Tensor:
    """C51 projection of the distribution ``r + discount * Z`` onto ``support``.

    Args:
        next_probs: (B, N) probabilities p_j of the next-state return on atoms z_j.
        rewards: (B,) n-step discounted rewards.
        discounts: (B,) gamma^n * (1 - terminal).
        support: (N,) evenly spaced atoms.

    Returns:
        (B, N): ``m_i = sum_j clip(1 - |clip(r + d z_j, vmin, vmax) - z_i| / dz, 0, 1) p_j``
        (Bellemare et al. 2017, Dopamine's form). The B x N x N weight tensor is tiny for N = 51
        and handles atoms landing exactly on z_i or on the support's edges without special cases.
        Mass is conserved and, for targets inside the support, so is the mean.
    """
    support = support.float()
    vmin, vmax = support[0], support[-1]
    dz = support[1] - support[0]
    tz = rewards.float()[:, None] + discounts.float()[:, None] * support[None, :]  # (B, N_j)
    tz = tz.clamp(vmin, vmax)
    # weight[b, i, j]: share of source atom j's mass that lands on target atom i.
    weight = (1.0 - (tz[:, None, :] - support[None, :, None]).abs() / dz).clamp(0.0, 1.0)
    return torch.einsum("bij,bj->bi", weight, next_probs.float())


@torch.no_grad()
def c51_target(
    target_next_logits: Tensor,
    rewards: Tensor,
    discounts: Tensor,
    valid_mask: Tensor,
    support: Tensor,
    online_next_logits: Tensor | None = None,
) -> Tensor:
    """Projected C51 target distribution (B, N) from next-state logits (B, 18, N).

    The next action is greedy in *expected* Q over the game's valid actions. As in Dopamine's C51
    (and Bellemare et al. 2017), the **target network both selects and evaluates** the next
    action; pass ``online_next_logits`` to select with the online network instead (double-DQN
    style, an option not used by the paper). ``valid_mask`` is the mask of the sample's game
    (the next state belongs to the same game).
    """
    target_probs = torch.softmax(target_next_logits.float(), dim=-1)  # (B, 18, N)
    if online_next_logits is None:
        q_next = (target_probs * support).sum(-1)
    else:
        q_next = expected_q(online_next_logits, support)
    a_next = masked_argmax(q_next, valid_mask)  # (B,)
    p_next = target_probs[torch.arange(a_next.shape[0], device=a_next.device), a_next]  # (B, N)
    return categorical_projection(p_next, rewards, discounts, support)


def distributional_td_loss(logits: Tensor, actions: Tensor, target_probs: Tensor) -> Tensor:
    """Per-sample cross-entropy -sum_i m_i log softmax(logits[b, a_b])_i: (B,).

    Uses log_softmax directly (exact, finite gradients), never log of clamped probabilities.
    ``target_probs`` is treated as a constant (detached). Equals KL(m || p) up to the entropy of
    m, which does not depend on the parameters (JOWA Eq. 9 writes the KL).
    """
    chosen = logits.float()[torch.arange(actions.shape[0], device=actions.device), actions]  # (B, N)
    return -(target_probs.detach().float() * F.log_softmax(chosen, dim=-1)).sum(-1)


@torch.no_grad()
def mse_target(
    target_next_q: Tensor,
    rewards: Tensor,
    discounts: Tensor,
    valid_mask: Tensor,
    online_next_q: Tensor | None = None,
) -> Tensor:
    """y = r + discount * Q_target(s', argmax_valid Q(s', .)) (B,); target net selects by default."""
    selector = target_next_q if online_next_q is None else online_next_q
    a_next = masked_argmax(selector, valid_mask)
    q_next = target_next_q.float().gather(1, a_next[:, None]).squeeze(1)
    return rewards.float() + discounts.float() * q_next


def mse_td_loss(q: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared TD error (Q(s, a) - y)^2: (B,); ``targets`` is detached."""
    q_a = q.float().gather(1, actions[:, None]).squeeze(1)
    return (q_a - targets.detach().float()).square()


def scale_rewards(rewards: Tensor, game_id: Tensor, reward_scale: Tensor) -> Tensor:
    """Per-game reward standardization for the MSE variant: r / scale[game_id].

    Why: with MSE, a game whose returns are 10x larger contributes 100x larger TD gradients
    (paper 000, Sec. 5.4). Dividing game g's rewards by a positive constant s_g divides its
    Q* by s_g exactly (the Bellman equation is linear in r) and leaves every greedy policy
    unchanged, so the network learns Q*/s_g, whose scale is ~1 for every game. Choose s_g with
    :func:`return_scale` (RMS of the dataset's discounted returns of game g). Note the CQL term
    then also acts on the standardized Q's, so one alpha fits all games.
    """
    return rewards.float() / reward_scale.float()[game_id]


def return_scale(returns: Tensor, game_ids: Tensor, num_games: int, min_scale: float = 1e-2) -> Tensor:
    """Per-game scale s_g = sqrt(mean over game g's samples of G^2), floored at ``min_scale``.

    ``returns``: (M,) Monte-Carlo discounted returns (same gamma as training) of dataset states;
    ``game_ids``: (M,). RMS rather than std because the *magnitude* of Q (offset included) is what
    sets the size of the TD error. Games without samples get scale 1.
    """
    returns = returns.float().flatten()
    game_ids = game_ids.long().flatten()
    sq = torch.zeros(num_games, dtype=torch.float64).index_add_(0, game_ids, returns.double().square())
    ones = torch.ones_like(returns, dtype=torch.float64)
    cnt = torch.zeros(num_games, dtype=torch.float64).index_add_(0, game_ids, ones)
    rms = torch.where(cnt > 0, (sq / cnt.clamp_min(1)).sqrt(), torch.ones_like(sq))
    return rms.clamp_min(min_scale).float()


def cql_loss(q_values: Tensor, actions: Tensor, valid_mask: Tensor) -> Tensor:
    """CQL(H) regularizer per sample: logsumexp_{a valid} Q(s, a) - Q(s, a_data): (B,).

    ``q_values`` must be *values* (B, 18). For C51 pass ``expected_q(logits, support)``: raw logits
    are shift-invariant under softmax and do not rank actions.
    """
    q = q_values.float()
    lse = torch.logsumexp(q.masked_fill(~valid_mask, float("-inf")), dim=-1)
    q_a = q.gather(1, actions[:, None]).squeeze(1)
    return lse - q_a


def combo_terms(q_model: Tensor, valid_model: Tensor, q_data: Tensor, actions_data: Tensor) -> tuple[Tensor, Tensor]:
    """COMBO's conservative terms (Yu et al. 2021; JOWA paper 003, Eq. 4), per sample.

    ``alpha * (E_{s,a ~ rho}[Q(s, a)] - E_{s,a ~ D}[Q(s, a)])``: Q is pushed *down* on states the
    world model generated and *up* on the dataset's state-actions. As in CQL(H), the expectation
    under the policy's occupancy rho at a model state is the soft maximum over its valid actions.
    Returns ``(down, up)``: ``down`` (M,) = logsumexp_{a valid} Q(s_model, a), ``up`` (N,) =
    Q(s_data, a_data); the loss is ``alpha * (down.mean() - up.mean())``. ``q_model`` (M, 18) and
    ``q_data`` (N, 18) must be values (C51: ``expected_q``), as for :func:`cql_loss`.
    """
    down = torch.logsumexp(q_model.float().masked_fill(~valid_model, float("-inf")), dim=-1)
    up = q_data.float().gather(1, actions_data[:, None]).squeeze(1)
    return down, up


def bc_loss(logits: Tensor, actions: Tensor, valid_mask: Tensor) -> Tensor:
    """Behaviour-cloning cross-entropy over valid actions: -log softmax_{valid}(logits)[a]: (B,)."""
    logp = F.log_softmax(logits.float().masked_fill(~valid_mask, float("-inf")), dim=-1)
    return -logp.gather(1, actions[:, None]).squeeze(1)

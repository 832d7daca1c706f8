"""Representation-collapse diagnostics on a fixed probe batch (issue 24, item 3).

Cheap measurements of what a network's representation still distinguishes, taken every N training
steps on the same probe batch and logged with the metrics:

- **srank** (Kumar et al., 2021, "Implicit Under-Parameterization Inhibits Data-Efficient Deep
  RL", eq. 1): with the singular values ``sigma_1 >= ... >= sigma_r`` of the (N, D) feature matrix,
  ``srank_delta = min { k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta }``, delta = 0.01.
  Singular values of the raw (uncentered) features, not eigenvalues of ``X^T X``.
- **dead units** per ReLU layer: a unit (a column of a (N, D) activation, a channel of a
  (N, C, ...) map) is dead when it is ``<= 0`` for every probe sample and every position.
- **relative across-sample variation** (``../shared/notes/learning_diagnosis.md``): the per-feature
  standard deviation over the probe (population, ``ddof = 0``) averaged over features, divided by
  the RMS of all entries. Scale-free; the diagnosis saw it fall 100-200x while ``resnet-tiny`` fitted
  the action marginal.
- **greedy-action spread**: the probe's share on its modal greedy action and the number of
  distinct greedy actions (every ResNet of the small-scale study played one action on 99-100%).

``ProbeDiagnostics`` runs one forward pass (eval mode, ``torch.no_grad``) with temporary forward
hooks on every ``nn.ReLU`` module, and returns a flat ``{"diag/...": number}`` dict for a JSONL
metrics line; ``collapse_flags`` turns a history of those dicts into readable warnings.
``qnet_probe_forward`` is the forward for Scaled QL's ``QNetwork`` (C51, MSE and BC heads).

ReLUs applied through ``torch.nn.functional`` (not modules) are not seen by the hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from workbench import losses as L

__all__ = [
    "DIAGNOSTIC_CURVES",
    "SRANK_DELTA",
    "MODAL_SHARE_COLLAPSED",
    "VARIATION_DROP_COLLAPSED",
    "SRANK_COLLAPSED",
    "srank",
    "dead_units",
    "relative_variation",
    "action_spread",
    "ProbeDiagnostics",
    "qnet_probe_forward",
    "collapse_flags",
]

#: The diagnostics a learning-curve figure draws, one panel each.
DIAGNOSTIC_CURVES = ("diag/srank", "diag/feature_variation", "diag/dead_fraction", "diag/greedy_modal_share")

SRANK_DELTA = 0.01
"""Kumar et al.'s delta: srank keeps the top singular values that hold 99% of their sum."""

MODAL_SHARE_COLLAPSED = 0.99
"""A run whose greedy action is the same on at least this share of the probe looks collapsed."""

VARIATION_DROP_COLLAPSED = 10.0
"""A run whose feature variation fell by at least this factor since the first record looks collapsed."""

SRANK_COLLAPSED = 2
"""A run whose srank fell (from above) to at most this value looks collapsed."""

ProbeForward = Callable[[nn.Module, Any], tuple[Tensor, Tensor]]
"""``forward(model, probe) -> (features (N, D), greedy_actions (N,))``."""


def _matrix(features: Tensor) -> Tensor:
    """(N, ...) -> (N, D) float64 on the CPU (deterministic across devices)."""
    if features.ndim < 2 or features.shape[0] == 0:
        raise ValueError(f"features must be (N, D) with N >= 1, got shape {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64).flatten(1)
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or inf")
    return x


def srank(features: Tensor, delta: float = SRANK_DELTA) -> int:
    """Effective rank of a (N, D) feature matrix (Kumar et al., 2021), in float64.

    The smallest k whose top-k singular values hold at least ``1 - delta`` of the sum of all
    singular values; 0 for an all-zero matrix. Trailing dimensions are flattened into D.
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    sigma = torch.linalg.svdvals(_matrix(features))  # descending
    total = sigma.sum()
    if total == 0:
        return 0
    share = torch.cumsum(sigma, 0) / total
    reached = share >= 1.0 - delta
    # The last share is 1 up to rounding; if rounding leaves it just below 1 - delta (delta = 0),
    # every singular value is needed.
    return int(reached.nonzero()[0, 0]) + 1 if bool(reached.any()) else int(sigma.numel())


def _dead_count(activations: Tensor) -> Tensor:
    """Number of dead units as a 0-d tensor (stays on the activations' device)."""
    if activations.ndim < 2 or activations.shape[0] == 0:
        raise ValueError(f"activations must be (N, units, ...) with N >= 1, got shape {tuple(activations.shape)}")
    dead = activations.detach().le(0).all(dim=0)  # (units, *positions)
    if dead.ndim > 1:
        dead = dead.flatten(1).all(dim=1)
    return dead.sum()


def dead_units(activations: Tensor) -> int:
    """Units that are ``<= 0`` on the whole batch.

    (N, D): each column is a unit. (N, C, *spatial): each channel is a unit (PyTorch's conv layout),
    dead only if it is ``<= 0`` for every sample and every position.
    """
    return int(_dead_count(activations))


def relative_variation(features: Tensor) -> float:
    """Mean over features of the across-sample std (``ddof = 0``), divided by the RMS of all entries.

    0 when every sample has the same features (and for an all-zero matrix); unchanged when the
    features are multiplied by a constant. Trailing dimensions are flattened into features.
    """
    x = _matrix(features)
    rms = x.square().mean().sqrt()
    if rms == 0:
        return 0.0
    return float(x.std(dim=0, correction=0).mean() / rms)


def action_spread(greedy_actions: Tensor | np.ndarray | Sequence[int]) -> dict[str, float | int]:
    """``modal_action`` (ties: the lowest), its ``modal_share`` of the batch, and ``distinct`` actions."""
    if isinstance(greedy_actions, Tensor):
        greedy_actions = greedy_actions.detach().cpu().numpy()
    actions = np.asarray(greedy_actions).ravel()
    if actions.size == 0:
        raise ValueError("no greedy actions")
    values, counts = np.unique(actions, return_counts=True)  # values ascending
    top = int(np.argmax(counts))  # first maximum: the lowest modal action
    return {
        "modal_action": int(values[top]),
        "modal_share": float(counts[top] / actions.size),
        "distinct": int(values.size),
    }


class ProbeDiagnostics:
    """Representation diagnostics of ``model`` on a fixed ``probe``; call it to measure.

    ``forward(model, probe)`` must return ``(features (N, D), greedy_actions (N,))`` and run the
    probe through the model once, as one batch: every application of an ``nn.ReLU`` module counts
    as its own layer. A module applied once is reported as ``diag/dead/<module path>``; one applied
    k > 1 times (e.g. a residual block's shared ``act``) as ``diag/dead/<path>#1`` ... ``#k`` in
    call order. The count is taken inside the hook, so in-place ReLUs and later in-place writes to
    their output do not change it.

    Each call runs in eval mode under ``torch.no_grad``, then restores every submodule's previous
    train/eval flag and removes its hooks (also when ``forward`` raises). Pass the plain module, not
    a DDP or ``torch.compile`` wrapper.

    Returned keys: ``diag/srank``, ``diag/feature_dim``, ``diag/feature_variation``,
    ``diag/dead/<layer>`` (dead-unit counts), ``diag/dead_fraction`` (dead units over all units of
    all ReLU layers; absent when the model has no ``nn.ReLU``), ``diag/greedy_modal_action``,
    ``diag/greedy_modal_share``, ``diag/greedy_distinct``.
    """

    def __init__(self, model: nn.Module, probe: Any, forward: ProbeForward, delta: float = SRANK_DELTA):
        self.model = model
        self.probe = probe
        self.forward = forward
        self.delta = delta

    def __call__(self) -> dict[str, float | int]:
        relus = [(name, m) for name, m in self.model.named_modules() if isinstance(m, nn.ReLU)]
        calls: dict[str, list[tuple[Tensor, int]]] = {name: [] for name, _ in relus}

        def hook_for(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                calls[name].append((_dead_count(output), int(output.shape[1])))

            return hook

        modes = [(m, m.training) for m in self.model.modules()]
        handles = [m.register_forward_hook(hook_for(name)) for name, m in relus]
        try:
            self.model.eval()
            with torch.no_grad():
                features, greedy = self.forward(self.model, self.probe)
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training

        if features.ndim != 2 or greedy.ndim != 1 or features.shape[0] != greedy.shape[0]:
            raise ValueError(
                f"forward must return features (N, D) and greedy actions (N,), got "
                f"{tuple(features.shape)} and {tuple(greedy.shape)}"
            )
        out: dict[str, float | int] = {
            "diag/srank": srank(features, self.delta),
            "diag/feature_dim": int(features.shape[1]),
            "diag/feature_variation": relative_variation(features),
        }
        dead_total = units_total = 0
        for name, applications in calls.items():
            for i, (count, units) in enumerate(applications, start=1):
                key = name if len(applications) == 1 else f"{name}#{i}"
                out[f"diag/dead/{key}"] = int(count)
                dead_total += int(count)
                units_total += units
        if units_total:
            out["diag/dead_fraction"] = dead_total / units_total
        spread = action_spread(greedy)
        out["diag/greedy_modal_action"] = spread["modal_action"]
        out["diag/greedy_modal_share"] = spread["modal_share"]
        out["diag/greedy_distinct"] = spread["distinct"]
        return out


def qnet_probe_forward(model: Any, probe: Mapping[str, Tensor], support: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Features and greedy actions of a ``QNetwork``-like model on ``probe`` (``obs``, ``game_id``).

    Duck-typed: ``model.features(obs)``, ``model.heads(features, game_id)`` ((B, 18, K)),
    ``model.valid_mask(game_id)`` and ``model.distributional``. The features pass through the heads
    once (``QNetwork.forward`` without its second trunk pass). Greedy actions follow Scaled QL's
    ``GreedyPolicy``: C51 acts on the expected value ``softmax(logits) . support`` (``support``, e.g.
    ``ScaledQL.support``, else ``model.support``), MSE on Q, BC on logits; invalid actions are masked
    and ties go to the lowest action. Inputs are moved to the model's device; no autocast.
    """
    device = next(model.parameters()).device
    obs = probe["obs"].to(device)
    game_id = probe["game_id"].to(device)
    features = model.features(obs)
    out = model.heads(features, game_id)  # (B, 18, K)
    if model.distributional:
        if support is None:
            support = getattr(model, "support", None)
        if support is None:
            raise ValueError("a C51 model needs its support: pass support= (e.g. ScaledQL.support)")
        q = L.expected_q(out, support.to(device))
    else:
        q = out.squeeze(-1)
    return features.float(), L.masked_argmax(q, model.valid_mask(game_id))


def collapse_flags(history: Sequence[Mapping[str, float | int]]) -> list[str]:
    """Warnings for a run whose latest diagnostics look collapsed (``history[0]`` = at init).

    Fires when the latest greedy modal share is ``>= MODAL_SHARE_COLLAPSED``, when the feature
    variation fell by ``>= VARIATION_DROP_COLLAPSED`` times since the first record, or when the
    srank fell from above ``SRANK_COLLAPSED`` to at most it. Checks whose keys are missing are
    skipped; an empty history gives no warnings.
    """
    if not history:
        return []
    first, last = history[0], history[-1]
    flags: list[str] = []
    share = last.get("diag/greedy_modal_share")
    if share is not None and share >= MODAL_SHARE_COLLAPSED:
        action = last.get("diag/greedy_modal_action")
        which = f"action {int(action)}" if action is not None else "one action"
        flags.append(
            f"greedy action collapsed: {which} on {share:.1%} of the probe "
            f"(threshold {MODAL_SHARE_COLLAPSED:.0%})"
        )
    v0, v1 = first.get("diag/feature_variation"), last.get("diag/feature_variation")
    if v0 is not None and v1 is not None and v0 > 0 and v1 * VARIATION_DROP_COLLAPSED <= v0:
        drop = f"{v0 / v1:.0f}x" if v1 > 0 else "to 0"
        flags.append(
            f"features stopped varying across samples: relative variation {v0:.2e} -> {v1:.2e} "
            f"(fell {drop}; threshold {VARIATION_DROP_COLLAPSED:g}x)"
        )
    r0, r1 = first.get("diag/srank"), last.get("diag/srank")
    if r0 is not None and r1 is not None and r0 > SRANK_COLLAPSED >= r1:
        flags.append(f"feature rank collapsed: srank {int(r0)} -> {int(r1)} (threshold {SRANK_COLLAPSED})")
    return flags

"""Scaled Q-learning (paper 000): CQL + C51 (``scaled_ql``), CQL + MSE (``cql_mse``), and BC (``bc``).

How a transition batch becomes a loss. The trainer owns the loop::

    with autocast: loss, metrics = algo.loss(batch)
    loss.backward(); clip; optimizer.step()            # optimizer over algo.model.parameters()
    every target_update_period gradient steps: algo.update_target()

Distributed / compiled training needs nothing here: the trainer wraps a module whose forward is
``algo.loss`` in DDP (or ``torch.compile``), so every parameter the loss touches is averaged.

Loss per sample (alpha = 0 disables CQL)::

    scaled_ql: CE(Pi T Z_target(s'), Z(s, a)) + alpha * (logsumexp_{valid a'} Q(s, a') - Q(s, a)),
               Q = sum_i z_i softmax(logits)_i
    cql_mse:   (Q(s, a) - y)^2 + alpha * (same CQL term on Q),  y = r/s_g + d * Q_t(s', a*)
    bc:        -log softmax_{valid}(logits(s))[a]
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from workbench import losses as L
from workbench.models.qnet import QNetwork, build_qnet

__all__ = ["ALGOS", "ScaledQLConfig", "ScaledQL", "GreedyPolicy"]

ALGOS: tuple[str, ...] = ("scaled_ql", "cql_mse", "bc")
_DEFAULT_ALPHA = {"scaled_ql": 0.05, "cql_mse": 0.1, "bc": 0.0}  # paper 000, Table B.1
BATCH_KEYS = ("obs", "action", "reward", "discount", "next_obs", "terminal", "game_id", "valid_mask")
BC_KEYS = ("obs", "action", "game_id", "valid_mask")


@dataclass(frozen=True)
class ScaledQLConfig:
    """Hyper-parameters of the method (defaults: paper 000 Table B.1 / App. B.2).

    ``gamma`` and ``n_step`` are recorded for provenance; the loss uses the batch's ``discount``
    (= gamma^n, 0 after a terminal), which the sampler computes with the same values.
    ``alpha=None`` picks the paper's value for the algo (0.05 C51, 0.1 MSE).
    ``reward_scale`` (MSE only): per-game scales s_g (see ``losses.return_scale``); None = 1.
    ``double_q``: select the next action with the online network (not the paper's setting).
    """

    algo: str = "scaled_ql"
    alpha: float | None = None
    gamma: float = 0.99
    n_step: int = 3
    vmin: float = -20.0
    vmax: float = 20.0
    num_atoms: int = 51
    target_update_period: int = 2000
    double_q: bool = False
    reward_scale: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; valid: {list(ALGOS)}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", _DEFAULT_ALPHA[self.algo])
        if self.alpha < 0 or not math.isfinite(self.alpha):  # type: ignore[operator]
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {self.n_step}")
        if self.target_update_period < 1:
            raise ValueError(f"target_update_period must be >= 1, got {self.target_update_period}")
        if self.algo == "scaled_ql":
            L.make_support(self.vmin, self.vmax, self.num_atoms)  # validates the support
        if self.reward_scale is not None:
            if self.algo != "cql_mse":
                raise ValueError("reward_scale applies to algo='cql_mse' only")
            if any(not (s > 0 and math.isfinite(s)) for s in self.reward_scale):
                raise ValueError(f"reward_scale entries must be finite and > 0, got {self.reward_scale}")

    @property
    def distributional(self) -> bool:
        return self.algo == "scaled_ql"


class ScaledQL:
    """Online + target Q-network and the loss of one of ``ALGOS``."""

    def __init__(self, model: QNetwork, config: ScaledQLConfig):
        if model.distributional != config.distributional:
            raise ValueError(
                f"algo {config.algo!r} needs a QNetwork with distributional={config.distributional}"
            )
        if config.distributional and model.num_atoms != config.num_atoms:
            raise ValueError(f"model has {model.num_atoms} atoms, config says {config.num_atoms}")
        if config.reward_scale is not None and len(config.reward_scale) != model.num_games:
            raise ValueError(f"reward_scale has {len(config.reward_scale)} entries for {model.num_games} games")
        self.config = config
        self.model = model
        # BC has no bootstrap target; keep no copy (saves memory at ResNet-101 sizes).
        self.target_model: QNetwork | None = None
        if config.algo != "bc":
            self.target_model = copy.deepcopy(model)
            self.target_model.requires_grad_(False)
        device = next(model.parameters()).device
        self.support = L.make_support(config.vmin, config.vmax, config.num_atoms, device=device)
        scale = config.reward_scale or (1.0,) * model.num_games
        self.reward_scale = torch.tensor(scale, dtype=torch.float32, device=device)

    @classmethod
    def build(
        cls,
        preset: str,
        games: Sequence[str] | Sequence[int],
        config: ScaledQLConfig | None = None,
        feature_norm: bool = True,
    ) -> "ScaledQL":
        """Build the network preset for ``games`` and wrap it (``config`` defaults to scaled_ql)."""
        config = config or ScaledQLConfig()
        model = build_qnet(preset, games, config.distributional, feature_norm, config.num_atoms)
        return cls(model, config)

    # ------------------------------------------------------------------ device / target

    def to(self, device: torch.device | str) -> "ScaledQL":
        """Move networks and constants to ``device`` (call before building the optimizer)."""
        self.model.to(device)
        if self.target_model is not None:
            self.target_model.to(device)
        self.support = self.support.to(device)
        self.reward_scale = self.reward_scale.to(device)
        return self

    def to_channels_last(self) -> "ScaledQL":
        """NHWC convolutions for the online and target networks (GPU speed; same results)."""
        self.model.to_channels_last()
        if self.target_model is not None:
            self.target_model.to_channels_last()
        return self

    def _follow_device(self, device: torch.device) -> None:
        # The trainer may move `model` after building the algo; keep the rest alongside it.
        if self.support.device != device:
            self.support = self.support.to(device)
            self.reward_scale = self.reward_scale.to(device)
        if self.target_model is not None and self.target_model.heads.bias.device != device:
            self.target_model.to(device)

    @torch.no_grad()
    def update_target(self) -> None:
        """Copy the online weights into the target network (hard update)."""
        if self.target_model is None:
            return
        for t, s in zip(self.target_model.parameters(), self.model.parameters()):
            t.copy_(s)
        for t, s in zip(self.target_model.buffers(), self.model.buffers()):
            t.copy_(s)

    # ------------------------------------------------------------------ loss

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss over the batch and detached scalar metrics (no host sync)."""
        needed = BC_KEYS if self.config.algo == "bc" else BATCH_KEYS
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(f"batch is missing keys {missing}; expected {list(BATCH_KEYS)}")
        algo = self.config.algo
        obs, actions, game_id, valid = batch["obs"], batch["action"], batch["game_id"], batch["valid_mask"]
        out = self.model(obs, game_id)
        self._follow_device(out.device)
        metrics: dict[str, Tensor] = {}

        if algo == "bc":
            per = L.bc_loss(out, actions, valid)
            total = per.mean()
            with torch.no_grad():
                metrics["loss/bc"] = total.detach()
                metrics["bc/accuracy"] = (L.masked_argmax(out, valid) == actions).float().mean()
                metrics["loss/total"] = total.detach()
            return total, metrics

        assert self.target_model is not None
        rewards, discounts = batch["reward"], batch["discount"]
        alpha = float(self.config.alpha)  # type: ignore[arg-type]
        with torch.no_grad():
            target_next = self.target_model(batch["next_obs"], game_id)
            # The unwrapped module: a no-grad pass needs no DDP gradient hooks.
            online_next = self.model(batch["next_obs"], game_id) if self.config.double_q else None

        if algo == "scaled_ql":
            target_probs = L.c51_target(target_next, rewards, discounts, valid, self.support, online_next)
            td = L.distributional_td_loss(out, actions, target_probs)
            q = L.expected_q(out, self.support)  # (B, 18)
        else:  # cql_mse
            r = L.scale_rewards(rewards, game_id, self.reward_scale)
            online_q = online_next.float() if online_next is not None else None
            y = L.mse_target(target_next, r, discounts, valid, online_q)
            q = out.float()
            td = L.mse_td_loss(q, actions, y)
        cql = L.cql_loss(q, actions, valid)
        total = (td + alpha * cql).mean()

        with torch.no_grad():
            q_data = q.gather(1, actions[:, None]).squeeze(1)
            metrics["loss/td"] = td.mean()
            metrics["loss/cql"] = cql.mean()
            metrics["loss/total"] = total.detach()
            metrics["q/data_mean"] = q_data.mean()
            metrics["q/max_mean"] = L.masked_max(q, valid).mean()
            metrics["q/greedy_is_data"] = (L.masked_argmax(q, valid) == actions).float().mean()
            metrics["batch/terminal_frac"] = batch["terminal"].float().mean()
            if algo == "scaled_ql":
                idx = torch.arange(actions.shape[0], device=actions.device)
                p_data = torch.softmax(out.float()[idx, actions], dim=-1)
                metrics["dist/edge_mass"] = (p_data[:, 0] + p_data[:, -1]).mean()
                metrics["dist/target_edge_mass"] = (target_probs[:, 0] + target_probs[:, -1]).mean()
                metrics["q/target_mean"] = (target_probs * self.support).sum(-1).mean()
            else:
                metrics["q/target_mean"] = y.mean()
        return total, metrics

    # ------------------------------------------------------------------ acting

    def policy(self, batch_size: int = 256) -> "GreedyPolicy":
        """Greedy policy over valid actions using the online network (for the evaluator)."""
        return GreedyPolicy(self.model, self.support, batch_size=batch_size)

    def state_dict(self) -> dict[str, Tensor]:
        """Online and target weights, flat, for safetensors checkpoints."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.target_model is not None:
            out.update({f"target.{k}": v for k, v in self.target_model.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        if self.target_model is not None:
            tgt = {k[7:]: v for k, v in state.items() if k.startswith("target.")}
            if tgt:
                self.target_model.load_state_dict(tgt)
            else:  # a BC or model-only checkpoint: start the target from the online weights
                self.update_target()


class GreedyPolicy:
    """``act(obs uint8 (N,4,84,84), game_ids int64 (N,)) -> int64 (N,)``: greedy over valid actions.

    C51 networks act on expected Q, MSE networks on Q, BC networks on logits (same argmax).
    Runs in eval mode under ``torch.inference_mode`` in chunks of ``batch_size``; the module's
    previous train/eval mode is restored afterwards.
    """

    def __init__(self, model: QNetwork, support: Tensor, batch_size: int = 256):
        self.model = model
        self.support = support
        self.batch_size = batch_size

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        if obs.dtype != np.uint8 or obs.ndim != 4:
            raise TypeError(f"obs must be uint8 (N, 4, 84, 84), got {obs.dtype} {obs.shape}")
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out = np.empty(obs.shape[0], dtype=np.int64)
        try:
            with torch.inference_mode():
                for s in range(0, obs.shape[0], self.batch_size):
                    o = torch.from_numpy(np.ascontiguousarray(obs[s : s + self.batch_size])).to(device)
                    g = torch.from_numpy(np.asarray(game_ids[s : s + self.batch_size], dtype=np.int64)).to(device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        y = self.model(o, g)
                    q = L.expected_q(y, self.support.to(device)) if self.model.distributional else y
                    out[s : s + o.shape[0]] = L.masked_argmax(q, self.model.valid_mask(g)).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

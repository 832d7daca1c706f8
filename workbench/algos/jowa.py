"""JOWA (paper 003): how a sequence batch becomes a loss, in two stages.

Stage 1: the VQ-VAE tokenizer (L1 + VQ losses, Adam lr 1e-4) and the world part of the model
(Eq. 8, lr 1e-4) train together; the world model reads tokens of the current tokenizer without
gradient into the tokenizer (as in IRIS), and the Q head is frozen (it gets no loss, and frozen
parameters keep DDP from waiting for gradients that never come).
Stage 2: the tokenizer is frozen; ``L = beta * L_world + L_action`` (Eq. 10, beta 0.1), lr 5e-5,
with ``L_action`` = C51 TD (1-step; Table 12 gives no n-step for JOWA) + CQL (alpha 0.1) on
expected Q over valid actions.

The trainer (``workbench.train``) owns the optimizer (AdamW: with weight decay 0 it is exactly the
paper's Adam for the tokenizer), gradient clipping (1.0) and calls ``update_target()`` every 1000
steps (Table 12). ``param_groups()`` puts weight decay 0.01 on the world-action model's weight
matrices only: biases, norms and embeddings get none (the usual GPT practice; the paper does not
say, and decaying embedding rows of rare tokens toward zero would only hurt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.models.tokenizer import Tokenizer
from workbench.models.world_action import (
    WorldActionConfig, WorldActionModel, action_losses, count_parameters, world_action_config, world_losses,
)

__all__ = ["JOWAConfig", "JOWAModel", "JOWA"]

SEQUENCE_KEYS = ("action", "reward", "terminal", "mask", "game_id", "valid_mask")


@dataclass(frozen=True)
class JOWAConfig:
    """Method hyperparameters (Table 12)."""

    stage: int = 1
    gamma: float = 0.99
    beta: float = 0.1
    """Weight of L_world in stage 2."""
    cql_alpha: float = 0.1
    lr: float | None = None
    """World-action model learning rate; None = the paper's 1e-4 (stage 1) / 5e-5 (stage 2)."""
    tokenizer_lr: float = 1e-4
    weight_decay: float = 0.01
    tokenizer_max_frames: int | None = None
    """Cap on frames per step for the tokenizer loss (the paper uses 2048 frames per batch)."""
    target_update_period: int = 1000

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("beta", "cql_alpha", "weight_decay", "tokenizer_lr"):
            v = getattr(self, name)
            if v < 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")

    @property
    def world_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.stage == 1 else 5e-5)


class JOWAModel(nn.Module):
    """The trained module: tokenizer + world-action model (checkpointed together)."""

    def __init__(self, cfg: WorldActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg.tokenizer)
        self.world = WorldActionModel(cfg)


class JOWA:
    """Loss, target update, optimizer groups and planner policy of JOWA; see module docstring."""

    def __init__(self, model: JOWAModel, games: Sequence[str] | Sequence[int], config: JOWAConfig | None = None) -> None:
        self.model = model
        self.games = tuple(games)
        if len(self.games) != model.cfg.num_games:
            raise ValueError(f"{len(self.games)} games but the model has {model.cfg.num_games} task embeddings")
        self.config = config or JOWAConfig()
        self.set_stage(self.config.stage)

    @classmethod
    def build(
        cls, preset: str, games: Sequence[str] | Sequence[int], config: JOWAConfig | None = None,
        *, stage: int | None = None, **overrides,
    ) -> JOWA:
        """Model preset ('jowa-40m', 'jowa-70m', 'jowa-150m', 'jowa-tiny') for ``games``.

        ``stage`` overrides ``config.stage``; ``overrides`` go to the model config.
        """
        cfg = world_action_config(preset, num_games=len(games), **overrides)
        config = config or JOWAConfig()
        if stage is not None:
            config = replace(config, stage=stage)
        return cls(JOWAModel(cfg), games, config)

    @property
    def seq_len(self) -> int:
        """Steps per training segment (8: the 296-token context)."""
        return self.model.cfg.max_steps

    def load_stage1(self, stage1: JOWA) -> None:
        """Start this (stage-2) algo from a trained stage-1 algo's weights; refreshes the target."""
        self.model.load_state_dict(stage1.model.state_dict())
        self.update_target()

    def to(self, device: torch.device | str) -> JOWA:
        self.model.to(device)
        return self

    def set_stage(self, stage: int) -> None:
        """Freeze what the stage does not train (build a new optimizer afterwards)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.config = replace(self.config, stage=stage)
        self.model.tokenizer.requires_grad_(stage == 1)
        self.model.world.requires_grad_(True)
        self.model.world.q_head.requires_grad_(stage == 2)
        self.model.world.target_q_head.requires_grad_(False)

    @property
    def stage(self) -> int:
        return self.config.stage

    @torch.no_grad()
    def update_target(self) -> None:
        self.model.world.update_target()

    def param_groups(self) -> list[dict]:
        """AdamW groups: tokenizer (stage 1, no decay), world weights (decay), world rest (no decay).

        The tokenizer group always carries Table 12's lr (1e-4). The world groups carry
        ``config.lr`` only when it is set; otherwise they take the trainer's lr
        (``TrainConfig.lr``, whose pipeline default is Table 12's 1e-4 in stage 1 and 5e-5 in
        stage 2, see ``config.paper_learning_rate``), so a user's lr override reaches them.
        ``config.world_lr`` gives the paper value for optimizers built by hand.
        """
        cfg = self.config
        decay, no_decay = [], []
        for name, p in self.model.world.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        lr = {} if cfg.lr is None else {"lr": cfg.lr}
        groups = [
            {"params": decay, **lr, "weight_decay": cfg.weight_decay, "name": "world_decay"},
            {"params": no_decay, **lr, "weight_decay": 0.0, "name": "world_no_decay"},
        ]
        if self.stage == 1:
            tok = [p for p in self.model.tokenizer.parameters() if p.requires_grad]
            groups.insert(0, {"params": tok, "lr": cfg.tokenizer_lr, "weight_decay": 0.0, "name": "tokenizer"})
        return [g for g in groups if g["params"]]

    def count_parameters(self) -> dict[str, int]:
        return count_parameters(self.model.world, self.model.tokenizer)

    # ------------------------------------------------------------------ loss

    def _tokens(self, batch: Mapping[str, Tensor]) -> Tensor:
        if "tokens" in batch:
            return batch["tokens"].long()
        if "obs" not in batch:
            raise KeyError("a JOWA batch needs 'obs' uint8 (B,L,84,84) or 'tokens' uint16 (B,L,36)")
        with torch.no_grad():
            return self.model.tokenizer.encode(batch["obs"])

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and a dict of detached scalar metrics for a sequence batch."""
        missing = [k for k in SEQUENCE_KEYS if k not in batch]
        if missing:
            raise KeyError(f"sequence batch lacks {missing}; expected keys {SEQUENCE_KEYS} + 'obs' or 'tokens'")
        cfg = self.config
        mask = batch["mask"].bool()
        metrics: dict[str, Tensor] = {}
        loss = torch.zeros((), device=mask.device)
        if self.stage == 1:
            if "obs" not in batch:
                raise ValueError("stage 1 trains the tokenizer and needs 'obs' frames, not only 'tokens'")
            frames = batch["obs"][mask]  # (M, 84, 84): real frames only
            if cfg.tokenizer_max_frames is not None and frames.shape[0] > cfg.tokenizer_max_frames:
                frames = frames[torch.randperm(frames.shape[0], device=frames.device)[: cfg.tokenizer_max_frames]]
            tok_loss, tok_metrics = self.model.tokenizer.loss(frames)
            loss = loss + tok_loss
            metrics.update(tok_metrics)
            metrics["tokenizer_loss"] = tok_loss.detach()
        tokens = self._tokens(batch)
        out = self.model.world(tokens, batch["action"], batch["game_id"])
        w_loss, w_metrics = world_losses(out, tokens, batch["action"], batch["reward"], batch["terminal"], mask)
        metrics.update(w_metrics)
        if self.stage == 1:
            loss = loss + w_loss
        else:
            a_loss, a_metrics = action_losses(
                self.model.world, out, batch["action"], batch["reward"], batch["terminal"], mask,
                batch["valid_mask"], gamma=cfg.gamma, cql_alpha=cfg.cql_alpha,
            )
            metrics.update(a_metrics)
            loss = loss + cfg.beta * w_loss + a_loss
        return loss, metrics

    # ------------------------------------------------------------------ acting

    def policy(
        self, horizon: int = 2, beam_width: int | Sequence[int] = 2, context_steps: int | None = None,
        gamma: float | None = None,
    ):
        """A `planner.PlannerPolicy` over this model (H = 0 or K = 1: greedy in Q)."""
        from workbench.planner import PlannerPolicy

        return PlannerPolicy(
            self.model.world, self.model.tokenizer, self.games, horizon=horizon, beam_width=beam_width,
            context_steps=context_steps, gamma=self.config.gamma if gamma is None else gamma,
        )

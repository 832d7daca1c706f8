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

Actions: JOWA embeds and scores the 18 ALE actions shared by all games, masked per game (paper
Sec. 4.1), so an embedding row or Q slot means the same button in every game. Batches carry
minimal-set indices like every other part of the workbench; ``loss`` maps them to ALE ids
(``world_action.ActionSpace``) and replaces the batch's minimal-set ``valid_mask`` by the mask of
the game's ALE actions. The planner policy maps back to minimal indices at the environment.
Checkpoints written before this change embedded minimal indices: their action rows and Q slots
mean something else, so retrain them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from workbench.algos.base import (
    Algo,
    DelegatingPolicy,
    EvalOptions,
    Explanation,
    FinetuneProtocol,
    Scale,
    Stage,
    StageContext,
    register,
    stage_iterator,
)
from workbench.algos.jowa_finetune import COMBO_PENALTIES, JOWA_FINETUNE
from workbench.data.sampler import SequenceSampler
from workbench.data.tokens import tokenize_store
from workbench.models.ref_tokenizer import build_tokenizer
from workbench.models.world_action import (
    PRESETS,
    ActionSpace,
    WorldActionConfig,
    WorldActionModel,
    action_losses,
    count_parameters,
    world_action_config,
    world_losses,
)
from workbench.planner import PlannerPolicy

__all__ = ["JOWAConfig", "JOWAModel", "JOWA", "JOWASpec", "PlannerInspector", "WorldPass"]

SEQUENCE_KEYS = ("action", "reward", "terminal", "mask", "game_id")
"""Keys ``loss`` reads (with 'obs' or 'tokens'); a batch's minimal-set 'valid_mask' is not used."""


@dataclass(frozen=True)
class JOWAConfig:
    """JOWA's method settings (paper 003, Table 12). Learning rates belong to the training stages
    (``JOWASpec.stages``): 1e-4 in stage 1, 5e-5 in stage 2; the tokenizer's own in pretraining.
    ``finetune_tokenizer_lr`` and ``combo_penalty`` apply to fine-tuning (``jowa_finetune``) only."""

    gamma: float = 0.99
    """Discount of the Q head's TD target and of the planner's predicted rewards."""
    beta: float = 0.1
    """Weight of L_world in stage 2 (Eq. 10)."""
    cql_alpha: float = 0.1
    """CQL weight of L_action."""
    tokenizer_lr: float = 1e-4
    """Learning rate of the VQ-VAE tokenizer in pretraining (stage 1; Table 12: 1e-4)."""
    finetune_tokenizer_lr: float = 0.0
    """Learning rate of the tokenizer in JOWA fine-tuning; 0 = the fine-tuning lr of every other
    component (App. E.2: one lr, 5e-5, or the user's ``lr``). The reference code's
    config/finetune_150M.yaml trains the tokenizer at 1e-4: give 1e-4 for its choice."""
    combo_penalty: str = "paper"
    """JOWA fine-tuning (stage 2): the states COMBO's logsumexp term pushes Q down on. ``paper``:
    the imagined states only (Eq. 4: rho is the policy's occupancy in the imagined MDP);
    ``reference``: every step of the batch, real and synthetic segments alike (the reference code's
    src/models/jowa_model.py with q_penalty=combo). Both push Q up on the real state-actions only."""
    weight_decay: float = 0.01
    """AdamW weight decay on the world-action model's weight matrices."""
    tokenizer_max_frames: int = 0
    """Cap on frames per step for the tokenizer loss (0 = every real frame of the batch)."""
    target_update_period: int = 1000
    """Gradient steps between target Q-head copies (Table 12: 1000)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("beta", "cql_alpha", "weight_decay", "tokenizer_lr", "finetune_tokenizer_lr"):
            v = getattr(self, name)
            if v < 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.combo_penalty not in COMBO_PENALTIES:
            raise ValueError(f"combo_penalty must be one of {' | '.join(COMBO_PENALTIES)}, got {self.combo_penalty!r}")
        if self.tokenizer_max_frames < 0:
            raise ValueError(f"tokenizer_max_frames must be >= 0 (0 = no cap), got {self.tokenizer_max_frames}")
        if self.target_update_period < 1:
            raise ValueError(f"target_update_period must be >= 1, got {self.target_update_period}")


class JOWAModel(nn.Module):
    """The trained module: tokenizer + world-action model (checkpointed together)."""

    def __init__(self, cfg: WorldActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = build_tokenizer(cfg.tokenizer)  # the reference's for the '-ref' presets
        self.world = WorldActionModel(cfg)


@dataclass
class WorldPass:
    """One pass of a sequence batch through the world-action model (``JOWA.world_pass``)."""

    tokens: Tensor
    """(B, L, 36) frame tokens."""
    actions: Tensor
    """(B, L) ALE action ids."""
    out: dict[str, Tensor]
    """The model's outputs (logits of next tokens, rewards, ends, and ``q_logits``)."""
    mask: Tensor
    """(B, L) steps that exist."""
    world_loss: Tensor
    metrics: dict[str, Tensor]


class JOWA:
    """Loss, target update, optimizer groups and planner policy of JOWA; see module docstring."""

    target_model: nn.Module | None = None  # the target Q head lives inside the model

    def __init__(self, model: JOWAModel, games: Sequence[str] | Sequence[int], config: JOWAConfig | None = None,
                 *, stage: int = 1) -> None:
        self.model = model
        # tuple() keeps the one element type of a Sequence[str] | Sequence[int]; mypy widens it to object.
        self.games = cast("tuple[str, ...] | tuple[int, ...]", tuple(games))
        if len(self.games) != model.cfg.num_games:
            raise ValueError(f"{len(self.games)} games but the model has {model.cfg.num_games} task embeddings")
        self.actions = ActionSpace(self.games)
        self.config = config or JOWAConfig()
        self.stage = 1
        self.set_stage(stage)

    @classmethod
    def build(
        cls, preset: str, games: Sequence[str] | Sequence[int], config: JOWAConfig | None = None,
        *, stage: int = 1, seed: int = 0, **overrides: Any,
    ) -> JOWA:
        """Model preset ('jowa-40m', 'jowa-70m', 'jowa-150m', 'jowa-tiny', or a size with the
        reference code's tokenizer, 'jowa-40m-ref' ...) for ``games``, its
        weights initialised from ``seed``; ``overrides`` go to the model config."""
        cfg = world_action_config(preset, num_games=len(games), **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = JOWAModel(cfg)
        return cls(model, games, config, stage=stage)

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

    def to_channels_last(self) -> JOWA:
        """Nothing to do: the tokenizer's convolutions are a small part of JOWA's cost."""
        return self

    def set_stage(self, stage: int) -> None:
        """Freeze what the stage does not train (build a new optimizer afterwards)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage = stage
        self.model.tokenizer.requires_grad_(stage == 1)
        self.model.world.requires_grad_(True)
        self.model.world.q_head.requires_grad_(stage == 2)
        self.model.world.target_q_head.requires_grad_(False)

    @torch.no_grad()
    def update_target(self) -> None:
        self.model.world.update_target()

    def param_groups(self) -> list[dict]:
        """AdamW groups: tokenizer (stage 1, no decay), world weights (decay), world rest (no decay).

        The tokenizer group carries ``config.tokenizer_lr`` (Table 12: 1e-4). The world groups
        take the trainer's lr (the stage's: Table 12's 1e-4 in stage 1 and 5e-5 in stage 2, see
        ``JOWASpec.stages``), so a user's lr override reaches them.
        """
        cfg = self.config
        decay: list[torch.Tensor] = []
        no_decay: list[torch.Tensor] = []
        for name, p in self.model.world.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "name": "world_decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "world_no_decay"},
        ]
        if self.stage == 1:
            tok = [p for p in self.model.tokenizer.parameters() if p.requires_grad]
            groups.insert(0, {"params": tok, "lr": cfg.tokenizer_lr, "weight_decay": 0.0, "name": "tokenizer"})
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ transfer (workbench.transfer)

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        """The model's parts for partial loading: tokenizer, transformer backbone (with the token
        and position embeddings), the per-game task embeddings, the world heads and the Q head
        (with its target copy)."""
        return {
            "tokenizer": ("tokenizer.",),
            "backbone": ("world.gpt.", "world.obs_emb.", "world.act_emb."),
            "task_embeddings": ("world.task_obs_emb.", "world.task_act_emb."),
            "world_heads": ("world.obs_head.", "world.reward_head.", "world.term_head."),
            "q_head": ("world.q_head.", "world.target_q_head."),
        }

    def game_rows(self, games: Sequence[str] | Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Both task-embedding tables hold one row per game (paper 003, Sec. 4.1.1)."""
        rows = (1,) * len(games)
        return {"world.task_obs_emb.weight": rows, "world.task_act_emb.weight": rows}

    def count_parameters(self) -> dict[str, int]:
        return count_parameters(self.model.world, self.model.tokenizer)

    # ------------------------------------------------------------------ loss

    def tokens(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's frame tokens: given (``tokens``), or encoded by the current tokenizer
        without gradient (the world model does not train the tokenizer, as in IRIS)."""
        if "tokens" in batch:
            return batch["tokens"].long()
        if "obs" not in batch:
            raise KeyError("a JOWA batch needs 'obs' uint8 (B,L,84,84) or 'tokens' uint16 (B,L,36)")
        with torch.no_grad():
            return self.model.tokenizer.encode(batch["obs"])

    def tokenizer_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_tokenizer`` on the batch's real frames (at most ``tokenizer_max_frames`` of them)."""
        if "obs" not in batch:
            raise ValueError("training the tokenizer needs 'obs' frames, not only 'tokens'")
        frames = batch["obs"][batch["mask"].bool()]  # (M, 84, 84): real frames only
        limit = self.config.tokenizer_max_frames
        if limit and frames.shape[0] > limit:
            frames = frames[torch.randperm(frames.shape[0], device=frames.device)[:limit]]
        loss, metrics = self.model.tokenizer.loss(frames)
        return loss, {**metrics, "loss/tokenizer": loss.detach()}

    def world_pass(self, batch: Mapping[str, Tensor]) -> WorldPass:
        """The world-action model over the batch's segments, with ``L_world`` (Eq. 8)."""
        tokens = self.tokens(batch)
        # Minimal-set indices -> ALE ids: the same button is the same token in every game.
        actions = self.actions.full(batch["action"], batch["game_id"])
        out = self.model.world(tokens, actions, batch["game_id"])
        mask = batch["mask"].bool()
        loss, metrics = world_losses(out, tokens, actions, batch["reward"], batch["terminal"], mask)
        return WorldPass(tokens, actions, out, mask, loss, dict(metrics))

    def action_loss(self, world: WorldPass, batch: Mapping[str, Tensor], *,
                    cql_alpha: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_action``: C51 TD + CQL (``cql_alpha``, default the settings') over the game's
        valid actions."""
        alpha = self.config.cql_alpha if cql_alpha is None else cql_alpha
        return action_losses(self.model.world, world.out, world.actions, batch["reward"], batch["terminal"],
                             world.mask, self.actions.valid_mask(batch["game_id"]), gamma=self.config.gamma,
                             cql_alpha=alpha)

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and a dict of detached scalar metrics for a sequence batch."""
        missing = [k for k in SEQUENCE_KEYS if k not in batch]
        if missing:
            raise KeyError(f"sequence batch lacks {missing}; expected keys {SEQUENCE_KEYS} + 'obs' or 'tokens'")
        metrics: dict[str, Tensor] = {}
        loss = torch.zeros((), device=batch["mask"].device)
        if self.stage == 1:
            tok_loss, tok_metrics = self.tokenizer_loss(batch)
            loss = loss + tok_loss
            metrics.update(tok_metrics)
        world = self.world_pass(batch)
        metrics.update(world.metrics)
        if self.stage == 1:
            loss = loss + world.world_loss
        else:
            a_loss, a_metrics = self.action_loss(world, batch)
            metrics.update(a_metrics)
            loss = loss + self.config.beta * world.world_loss + a_loss
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    # ------------------------------------------------------------------ acting

    def policy(self, options: EvalOptions | None = None, *, return_tree: bool = False) -> Any:
        """The planner (`planner.PlannerPolicy`) over this model with the options' H and K
        (H = 0 or K = 1: greedy in Q)."""
        options = options or EvalOptions()
        return PlannerPolicy(
            self.model.world, self.model.tokenizer, self.games, horizon=options.planning_horizon,
            beam_width=options.beam_width, gamma=self.config.gamma, return_tree=return_tree,
        )

    def inspectable_policy(self, options: EvalOptions | None = None) -> PlannerInspector:
        """The planner, also returning its root distributions, search trees and imagined frames."""
        return PlannerInspector(self.policy(options, return_tree=True))


class PlannerInspector(DelegatingPolicy):
    """Explains each decision of a JOWA planner: the root's return distributions, the search tree
    and the frames the world model imagined along the chosen path (what ``act`` itself computed,
    no extra forward). Like the planner's, its action slots, tree actions and returned actions
    are minimal-set indices of each game."""

    def __init__(self, planner: Any) -> None:
        super().__init__(planner)
        self.planner = planner

    def act_explained(self, obs: np.ndarray, game_ids: np.ndarray) -> tuple[np.ndarray, list[Explanation]]:
        actions = np.asarray(self.planner.act(obs, game_ids))
        probs, trees = self.planner.last_root_probs, self.planner.last_trees
        frames = self.planner.decode_predicted_frames()
        support = self.planner.support
        out = []
        for i in range(len(actions)):
            out.append(Explanation(
                q_probs=None if probs is None else probs[i], support=support,
                tree=trees[i] if trees else None,
                predicted_frames=None if frames is None else frames[i].astype(np.uint8),
            ))
        return actions, out


# ------------------------------------------------------------------------------- registry


class JOWASpec:
    """JOWA in two stages: stage 1 trains the tokenizer and the world model on frames, stage 2
    the world model and the Q head on pre-tokenized segments (paper 003, Section 5.1)."""

    name = "jowa"
    label = "JOWA"
    description = "JOWA: VQ-VAE + GPT world model with a C51 Q head, beam-search planning (paper 003)"
    settings_class: type = JOWAConfig
    metric_prefixes: tuple[str, ...] = ("loss/", "world/", "tokenizer/", "q/")
    # The tokenizer pads an 84x84 frame to 96 for its 6x6 token grid; MinAtar's 10x10 grids would
    # need another tokenizer (or none: its cells are already tokens), which is not built.
    suites: tuple[str, ...] = ("atari",)
    finetune: FinetuneProtocol | None = JOWA_FINETUNE
    curves: tuple[str, ...] = (  # every loss term of both stages (stage 1: tokenizer + world model)
        "loss/total", "loss/tokenizer", "tokenizer/l1", "tokenizer/codebook", "tokenizer/commitment",
        "tokenizer/perceptual", "loss/world", "world/obs_ce", "world/reward_ce", "world/term_ce", "loss/action",
        "loss/td", "loss/cql", "q/data_mean")

    def model_presets(self) -> tuple[str, ...]:
        return tuple(PRESETS)

    def default_model(self) -> str:
        return "jowa-tiny"

    def scale(self, preset: str, model: str) -> Scale:
        if preset == "paper":
            # Section 5.1: 250k steps of stage 1, then 1.5M of stage 2 (1.75M in all), batch 512.
            return Scale(steps=1_500_000, batch_size=512, eval_max_steps=27_000, eval_episodes=16,
                         stage_steps={"stage1": 250_000, "stage2": 1_500_000})
        # cpu: planning evaluation dominates on CPU, so training stays short.
        steps, batch = (60, 8) if model.endswith("-tiny") else (10, 2)
        return Scale(steps=steps, batch_size=batch, eval_max_steps=100, log_every=5, checkpoint_every=100,
                     games_per_batch=min(8, batch), settings={"target_update_period": 50})

    def stages(self, settings: Any, scale: Scale, batch_size: int, lr: float) -> list[Stage]:
        # Table 12: 1e-4 in stage 1, 5e-5 in stage 2, AdamW weight decay 0.01 (on weight matrices).
        return [
            Stage(name, subdir, scale.stage_steps.get(name, scale.steps), lr or paper_lr, settings.weight_decay,
                  settings.target_update_period, find_unused_parameters=True)
            for name, subdir, paper_lr in (("stage1", "stage1", 1e-4), ("stage2", "", 5e-5))
        ]

    def settings_from_data(self, settings: Any, store: Any, games: Sequence[str]) -> dict[str, Any]:
        """None: JOWA's C51 support covers clipped rewards of every game alike."""
        return {}

    def build(self, model: str, games: Sequence[str], settings: Any, seed: int) -> Algo:
        return JOWA.build(model, games, settings, stage=1, seed=seed)

    def enter_stage(self, algo: Algo, stage: str, context: StageContext) -> None:
        assert isinstance(algo, JOWA)
        if stage == "stage1":
            algo.set_stage(1)
            return
        algo.set_stage(2)
        algo.update_target()  # the Q head starts stage 2 with its target equal to itself
        # Stage 2 freezes the tokenizer: encode the store once (rank 0) and train on the tokens.
        if context.rank == 0:
            tokenize_store(context.store, algo.model.tokenizer, self._tokens(context), device=context.device,
                           progress=context.progress)
        if context.world_size > 1:
            dist.barrier()

    @staticmethod
    def _tokens(context: StageContext) -> Any:
        return context.run_dir / "data" / "tokens"

    def batches(self, algo: Algo, stage: str, context: StageContext) -> Any:
        assert isinstance(algo, JOWA)
        tokens = self._tokens(context) if stage == "stage2" else None
        return stage_iterator(SequenceSampler(
            context.store, context.games, context.batch_size, seq_len=algo.seq_len,
            seed=context.seed, tokens=tokens, rank=context.rank, world_size=context.world_size,
        ))


register(JOWASpec())

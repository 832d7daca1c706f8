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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from workbench import losses as L
from workbench.algos.base import (
    Algo,
    DelegatingPolicy,
    EvalOptions,
    Explanation,
    FinetuneProtocol,
    FinetuneScale,
    Scale,
    Stage,
    StageContext,
    register,
    stage_iterator,
)
from workbench.data.sampler import TransitionSampler
from workbench.data.store import ReplayStore
from workbench.diagnostics import qnet_probe_forward
from workbench.models.qnet import PRESETS as QNET_PRESETS
from workbench.models.qnet import QNetwork, build_qnet, resolve_num_actions
from workbench.settings import check_finite

__all__ = ["ALGOS", "BCConfig", "CQLMSEConfig", "GreedyPolicy", "QNetInspector", "ScaledQL", "ScaledQLConfig",
           "QLearningSpec"]

ALGOS: tuple[str, ...] = ("scaled_ql", "cql_mse", "bc")
BATCH_KEYS = ("obs", "action", "reward", "discount", "next_obs", "terminal", "game_id", "valid_mask")
BC_KEYS = ("obs", "action", "game_id", "valid_mask")


def _check_q_settings(cfg: Any) -> None:
    check_finite(cfg, "alpha", minimum=0.0)
    if not 0.0 <= cfg.gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {cfg.gamma}")
    if cfg.n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {cfg.n_step}")
    if cfg.target_update_period < 1:
        raise ValueError(f"target_update_period must be >= 1, got {cfg.target_update_period}")


@dataclass(frozen=True)
class ScaledQLConfig:
    """Scaled QL: C51 + CQL (paper 000, Table B.1 and Appendix B.2)."""

    alpha: float = 0.05
    """CQL weight (the paper's 0.05 for C51; 0 disables the conservative term)."""
    gamma: float = 0.99
    """Discount. The loss uses the batch's ``discount`` (gamma^n, 0 after a terminal), which the
    sampler computes from this value and ``n_step``."""
    n_step: int = 3
    """n-step return length (the paper: 3)."""
    vmin: float = -20.0
    """Lowest atom of the C51 support."""
    vmax: float = 20.0
    """Highest atom of the C51 support."""
    num_atoms: int = 51
    """Atoms of the C51 support."""
    target_update_period: int = 2000
    """Gradient steps between target-network copies (paper: 2000)."""
    double_q: bool = False
    """Select the next action with the online network (not the paper's setting)."""
    feature_norm: bool = True
    """Divide the encoder's features by their L2 norm (the paper's; False for the ablation)."""

    loss: ClassVar[str] = "c51"

    def __post_init__(self) -> None:
        _check_q_settings(self)
        L.make_support(self.vmin, self.vmax, self.num_atoms)  # validates the support


@dataclass(frozen=True)
class CQLMSEConfig:
    """CQL with a mean-squared TD error (paper 000's MSE ablation, Table B.1)."""

    alpha: float = 0.1
    """CQL weight (the paper's 0.1 for MSE)."""
    gamma: float = 0.99
    """Discount (see ``ScaledQLConfig.gamma``)."""
    n_step: int = 3
    """n-step return length."""
    target_update_period: int = 2000
    """Gradient steps between target-network copies."""
    double_q: bool = False
    """Select the next action with the online network (not the paper's setting)."""
    feature_norm: bool = True
    """Divide the encoder's features by their L2 norm."""
    reward_scale: tuple[float, ...] | None = None
    """Per-game reward scales s_g (``losses.return_scale``); None = 1 for every game."""

    loss: ClassVar[str] = "mse"

    def __post_init__(self) -> None:
        _check_q_settings(self)
        if self.reward_scale is not None and any(not (s > 0 and math.isfinite(s)) for s in self.reward_scale):
            raise ValueError(f"reward_scale entries must be finite and > 0, got {self.reward_scale}")


@dataclass(frozen=True)
class BCConfig:
    """Multi-task behaviour cloning with the Scaled QL network (the papers' MTBC baseline)."""

    feature_norm: bool = True
    """Divide the encoder's features by their L2 norm."""

    loss: ClassVar[str] = "bc"


QConfig = ScaledQLConfig | CQLMSEConfig | BCConfig


class ScaledQL:
    """Online + target Q-network and the loss of one of ``ALGOS``."""

    def __init__(self, model: QNetwork, config: QConfig):
        distributional = config.loss == "c51"
        if model.distributional != distributional:
            raise ValueError(f"a {config.loss} loss needs a QNetwork with distributional={distributional}")
        if isinstance(config, ScaledQLConfig) and model.num_atoms != config.num_atoms:
            raise ValueError(f"model has {model.num_atoms} atoms, config says {config.num_atoms}")
        scale: tuple[float, ...] = (1.0,) * model.num_games
        if isinstance(config, CQLMSEConfig) and config.reward_scale is not None:
            if len(config.reward_scale) != model.num_games:
                raise ValueError(f"reward_scale has {len(config.reward_scale)} entries for {model.num_games} games")
            scale = config.reward_scale
        self.config = config
        self.model = model
        # BC has no bootstrap target; keep no copy (saves memory at ResNet-101 sizes).
        self.target_model: QNetwork | None = None
        if config.loss != "bc":
            self.target_model = copy.deepcopy(model)
            self.target_model.requires_grad_(False)
        device = next(model.parameters()).device
        # The support is C51's; the other losses keep a 1-atom placeholder that nothing reads.
        self.support = (L.make_support(config.vmin, config.vmax, config.num_atoms, device=device)
                        if isinstance(config, ScaledQLConfig) else torch.zeros(1, device=device))
        self.reward_scale = torch.tensor(scale, dtype=torch.float32, device=device)

    @classmethod
    def build(
        cls, preset: str, games: Sequence[str] | Sequence[int], config: QConfig | None = None, *, seed: int = 0,
    ) -> ScaledQL:
        """Build the network preset for ``games`` with weights initialised from ``seed``, and wrap
        it (``config`` defaults to Scaled QL's C51 + CQL)."""
        config = config or ScaledQLConfig()
        atoms = config.num_atoms if isinstance(config, ScaledQLConfig) else 51
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_qnet(preset, games, config.loss == "c51", config.feature_norm, atoms)
        return cls(model, config)

    # ------------------------------------------------------------------ device / target

    def to(self, device: torch.device | str) -> ScaledQL:
        """Move networks and constants to ``device`` (call before building the optimizer)."""
        self.model.to(device)
        if self.target_model is not None:
            self.target_model.to(device)
        self.support = self.support.to(device)
        self.reward_scale = self.reward_scale.to(device)
        return self

    def to_channels_last(self) -> ScaledQL:
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
        for tb, sb in zip(self.target_model.buffers(), self.model.buffers()):
            tb.copy_(sb)

    # ------------------------------------------------------------------ loss

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss over the batch and detached scalar metrics (no host sync)."""
        needed = BC_KEYS if self.config.loss == "bc" else BATCH_KEYS
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(f"batch is missing keys {missing}; expected {list(needed)}")
        cfg = self.config
        obs, actions, game_id, valid = batch["obs"], batch["action"], batch["game_id"], batch["valid_mask"]
        out = self.model(obs, game_id)
        self._follow_device(out.device)
        metrics: dict[str, Tensor] = {}

        if isinstance(cfg, BCConfig):
            per = L.bc_loss(out, actions, valid)
            total = per.mean()
            with torch.no_grad():
                metrics["loss/bc"] = total.detach()
                metrics["bc/accuracy"] = (L.masked_argmax(out, valid) == actions).float().mean()
                metrics["loss/total"] = total.detach()
            return total, metrics

        assert self.target_model is not None
        rewards, discounts = batch["reward"], batch["discount"]
        alpha = float(cfg.alpha)
        with torch.no_grad():
            target_next = self.target_model(batch["next_obs"], game_id)
            # The unwrapped module: a no-grad pass needs no DDP gradient hooks.
            online_next = self.model(batch["next_obs"], game_id) if cfg.double_q else None

        target_probs = y = None
        if isinstance(cfg, ScaledQLConfig):
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
            if target_probs is not None:
                idx = torch.arange(actions.shape[0], device=actions.device)
                p_data = torch.softmax(out.float()[idx, actions], dim=-1)
                metrics["dist/edge_mass"] = (p_data[:, 0] + p_data[:, -1]).mean()
                metrics["dist/target_edge_mass"] = (target_probs[:, 0] + target_probs[:, -1]).mean()
                metrics["q/target_mean"] = (target_probs * self.support).sum(-1).mean()
            elif y is not None:
                metrics["q/target_mean"] = y.mean()
        return total, metrics

    # ------------------------------------------------------------------ acting

    def param_groups(self) -> list[dict[str, Any]]:
        """One Adam group over the online network (the paper's optimizer, no weight decay)."""
        return [{"params": list(self.model.parameters())}]

    def policy(self, options: EvalOptions | None = None, batch_size: int = 256) -> GreedyPolicy:
        """Greedy policy over valid actions using the online network (for the evaluator)."""
        return GreedyPolicy(self.model, self.support, batch_size=batch_size)

    def inspectable_policy(self, options: EvalOptions | None = None) -> QNetInspector:
        """The greedy policy, also returning the Q distributions (C51) or values behind each act."""
        return QNetInspector(self)

    def probe_forward(self, probe: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Trunk features (what the heads read) and greedy actions on a batch (``workbench.diagnostics``)."""
        return qnet_probe_forward(self.model, probe, self.support)

    # ------------------------------------------------------------------ transfer (workbench.transfer)

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        """The network's parts for partial loading: the visual encoder, the feed-forward trunk
        (with its LayerNorm) and the per-game heads (paper 000, Figure 1)."""
        return {"encoder": ("encoder.",), "trunk": ("trunk.",), "heads": ("heads.",)}

    def game_rows(self, games: Sequence[str] | Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The joint head matrix holds |A_g| x atoms rows per game, in game order."""
        rows = tuple(n * self.model.num_atoms for n in resolve_num_actions(games))
        return {"heads.weight": rows, "heads.bias": rows}

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
    """``act(obs uint8 (N,4,H,W), game_ids int64 (N,)) -> int64 (N,)``: greedy over valid actions.

    C51 networks act on expected Q, MSE networks on Q, BC networks on logits (same argmax).
    Runs in eval mode under ``torch.inference_mode`` in chunks of ``batch_size``; the module's
    previous train/eval mode is restored afterwards.
    """

    def __init__(self, model: QNetwork, support: Tensor, batch_size: int = 256):
        self.model = model
        self.support = support
        self.batch_size = batch_size

    def reset(self, indices: np.ndarray) -> None:
        """Memoryless: nothing to reset."""

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Memoryless: the executed actions change nothing."""

    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        if obs.dtype != np.uint8 or obs.ndim != 4:
            raise TypeError(f"obs must be uint8 (N, 4, H, W) stacks, got {obs.dtype} {obs.shape}")
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


class QNetInspector(DelegatingPolicy):
    """The greedy policy of a Scaled QL / CQL-MSE / BC algo that explains each decision.

    ``act_explained`` returns the actions of ``GreedyPolicy`` and, per environment, the C51
    probabilities over the support (softmax of the head's logits) or the MSE head's Q values (BC:
    logits), for all 18 slots.
    """

    def __init__(self, algo: ScaledQL) -> None:
        super().__init__(algo.policy())
        self.algo = algo

    def act_explained(self, obs: np.ndarray, game_ids: np.ndarray) -> tuple[np.ndarray, list[Explanation]]:
        model = self.algo.model
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        try:
            with torch.inference_mode():
                o = torch.from_numpy(np.ascontiguousarray(obs)).to(device)
                g = torch.from_numpy(np.asarray(game_ids, dtype=np.int64)).to(device)
                out = model(o, g).float()
        finally:
            model.train(was)
        actions = self.inner.act(obs, game_ids)
        if model.distributional:
            probs = out.softmax(-1).cpu().numpy()
            support = self.algo.support.float().cpu().numpy()
            return actions, [Explanation(q_probs=p, support=support) for p in probs]
        return actions, [Explanation(q_values=q) for q in out.cpu().numpy()]


# ------------------------------------------------------------------------------- fine-tuning


def finetune_1pct_scale(preset: str, model: str, method: str, *, target_period: bool = True) -> FinetuneScale:
    """Paper 000's offline fine-tuning scale (App. B.4: batch 32, lr 5e-5, 300k steps, target
    period 2000) under ``paper``; minutes on 2 cores under ``cpu``. ``target_period=False`` for a
    network without a target (MGDT, fine-tuned on this protocol in the paper's Figure 7)."""
    tiny = model.endswith("-tiny")
    # A recording (dataset='') of 10,000 steps: the 1% split keeps about 100 transitions.
    if preset == "paper":
        return FinetuneScale((("train", 300_000),), batch_size=32, lr=5e-5, eval_episodes=16, eval_max_steps=27_000,
                             record_steps=10_000, snapshot_every=10_000, log_every=100, checkpoint_every=10_000,
                             settings={"target_update_period": 2000} if target_period else {})
    steps, batch = (200, 32) if tiny else (10, 8)
    return FinetuneScale((("train", steps),), batch_size=batch, lr=5e-5, eval_episodes=2,
                         eval_max_steps=1000 if tiny else 250, record_steps=10_000, snapshot_every=50, log_every=10,
                         checkpoint_every=100, settings={"target_update_period": 50} if target_period else {})


SCALED_QL_FINETUNE = FinetuneProtocol(
    # Paper 000, Sec. 5.2 and App. B.4: 1% of the held-out game's data; the encoder and the old
    # games' heads transfer, the trunk is re-initialized, the new game gets a fresh head; the
    # encoder may be frozen. Baselines on the same data: scratch, and MTBC from a random init.
    name="scaled_ql", paper_split="finetune_1pct",
    held_out_games=("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner"),
    methods=("transfer", "scratch", "bc"), pretrained_methods=("transfer",), scale_fn=finetune_1pct_scale,
    transferred=("encoder", "heads"), reinitialized=("trunk",), freezable=("encoder",),
    method_algos={"bc": "bc"}, carried_settings=("feature_norm",),
)


# ------------------------------------------------------------------------------- registry


class QLearningSpec:
    """Scaled QL (``scaled_ql``), CQL-MSE (``cql_mse``) and MTBC (``bc``): one network family,
    three losses, one training stage."""

    metric_prefixes: tuple[str, ...] = ("loss/", "q/", "dist/", "bc/", "batch/")
    suites: tuple[str, ...] = ("atari", "minatar")
    finetune: FinetuneProtocol | None = SCALED_QL_FINETUNE

    def __init__(self, name: str, label: str, settings_class: type, description: str, curves: tuple[str, ...]) -> None:
        self.name, self.label, self.settings_class = name, label, settings_class
        self.description, self.curves = description, curves

    def model_presets(self) -> tuple[str, ...]:
        return tuple(QNET_PRESETS)

    def default_model(self) -> str:
        return "resnet-tiny"

    def scale(self, preset: str, model: str) -> Scale:
        if preset == "paper":  # Table B.1: 10M steps at batch 512 (128 games x 4)
            return Scale(steps=10_000_000, batch_size=512, eval_max_steps=27_000, eval_episodes=16)
        # cpu: minutes on 2 cores. Tiny models learn something in that time; paper-size models
        # (one ResNet-101 step at batch 8 takes seconds) run a few steps through the whole pipeline.
        steps, batch, cap = (300, 32, 1000) if model.endswith("-tiny") else (20, 8, 250)
        return Scale(steps=steps, batch_size=batch, eval_max_steps=cap, log_every=5, checkpoint_every=100,
                     games_per_batch=min(8, batch), settings={"target_update_period": 50})

    def stages(self, settings: Any, scale: Scale, batch_size: int, lr: float) -> list[Stage]:
        # 5e-5 at batch 32 and 2e-4 at batch 512 (Appendix B.3): square-root scaling in the
        # batch size reproduces both points, and we use it in between.
        rate = lr or 5e-5 * math.sqrt(batch_size / 32)
        period = getattr(settings, "target_update_period", 0)  # BC has no target network
        return [Stage("train", "", scale.steps, rate, weight_decay=0.0, target_update_period=period)]

    def settings_from_data(self, settings: Any, store: Path, games: Sequence[str]) -> dict[str, Any]:
        """The MSE variant standardizes reward scales across games (paper 000, Section 5.4): s_g is
        the RMS of game g's discounted dataset returns (``losses.return_scale``)."""
        if not isinstance(settings, CQLMSEConfig) or settings.reward_scale is not None:
            return {}

        data = ReplayStore(store)
        returns = [torch.from_numpy(data.discounted_returns(g, settings.gamma)) for g in games]
        ids = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(returns)])
        scale = L.return_scale(torch.cat(returns), ids, len(games))
        return {"reward_scale": [float(v) for v in scale]}

    def build(self, model: str, games: Sequence[str], settings: Any, seed: int) -> Algo:
        return ScaledQL.build(model, games, settings, seed=seed)

    def enter_stage(self, algo: Algo, stage: str, context: StageContext) -> None:
        """One stage, nothing to prepare."""

    def batches(self, algo: Algo, stage: str, context: StageContext) -> Any:
        settings = algo.config  # type: ignore[attr-defined]
        # BC reads only (obs, action); any horizon gives it the same samples.
        n_step, gamma = (1, 0.99) if isinstance(settings, BCConfig) else (settings.n_step, settings.gamma)
        return stage_iterator(TransitionSampler(
            context.store, context.games, context.batch_size, n_step=n_step, gamma=gamma, stratified=True,
            games_per_batch=context.games_per_batch, seed=context.seed, rank=context.rank,
            world_size=context.world_size,
        ))


_TD_CURVES = ("loss/td", "loss/cql", "q/data_mean")
register(QLearningSpec("scaled_ql", "Scaled QL", ScaledQLConfig, "Scaled Q-learning: C51 + CQL (paper 000)",
                       _TD_CURVES))
register(QLearningSpec("cql_mse", "Scaled QL (MSE)", CQLMSEConfig, "CQL with an MSE TD loss (paper 000's ablation)",
                       _TD_CURVES))
register(QLearningSpec("bc", "MTBC", BCConfig, "MTBC: multi-task behaviour cloning, the Scaled QL network with a BC "
                       "loss (the papers' BC baseline)", ("loss/bc", "bc/accuracy")))

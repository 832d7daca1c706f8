"""Multi-Game Decision Transformer (Lee et al. 2022) as a registered algorithm, ``mgdt``.

Training: sequence batches of ``context_steps`` (4) steps from ``SequenceSampler`` with
``returns_to_go=True`` (undiscounted sums of the stored clipped rewards to the end of each stored
episode piece); the loss combines three cross-entropies over real steps (``models.mgdt``): the
return-to-go bin at the observation, the action at the return token (among the game's valid ALE
actions) and the reward sign at the action token. Batches carry minimal-set actions like every
other part of the workbench; the loss maps them to the 18 ALE ids (``ActionSpace``), so a token
means the same button in every game.

Acting (:class:`MGDTPolicy`), MGDT's *expert-action inference*: per step, a target return is
sampled from the model's return distribution P(R | context, o), optionally re-weighted towards
high returns, ``P(R) * exp(kappa * (R - R_low) / (R_high - R_low))`` with ``[R_low, R_high]`` the
return bins' range; the action is then sampled (or taken greedily) from the model's action
distribution conditioned on that return, among the game's valid actions (the evaluator adds its
epsilon). The target is sampled afresh at every step, so the policy follows the model's estimate
of the best return still reachable. The executed actions and the observed rewards, clipped to
[-1, 1] as in the data, enter the context through ``observe``, which also keeps each
environment's return-to-go: the last target minus the reward since. With ``target_return`` set,
the policy is a plain Decision Transformer instead: it conditions on that return at an episode's
start and then on the return-to-go, decremented by each observed clipped reward.

**The public model by default.** :class:`MGDTSettings` defaults follow the released model and its
colab (google-research ``multi_game_dt/Multi_game_decision_transformers_public_colab.ipynb``);
each is a switch:

=========================  =====================  =============================================
setting                    default                colab source
=========================  =====================  =============================================
``attention``              ``"patch_block"``      ``DecisionTransformer.__call__``:
                                                  ``custom_causal_mask = np.logical_or(
                                                  sequential_causal_mask, block_diag)``
``single_return_token``    True                   ``model_fn``: ``single_return_token = True``
                                                  (``ret_mask.at[:, 1:].set(0)``; return target
                                                  ``ret_target[:, :1]``)
``loss_weighting``         ``"colab"``            ``cross_entropy`` (``jnp.mean`` over classes
                                                  too) and ``sequence_loss``
                                                  (``sum(obj) / len(obj)``)
``kappa``                  0                      ``optimal_action``: ``opt_weight = 0``
``return_samples``         128                    ``num_samples = 128`` (the highest sampled
                                                  return is kept: ``jnp.max(ret_sample, 0)``)
``return_temperature``     0.75                   ``return_temperature = 0.75``
``return_top_percentile``  None                   ``return_top_percentile = None``
``action_sampling``        ``"sample"``           ``sample_from_logits(..., deterministic=False)``
``action_temperature``     1.0                    ``action_temperature = 1.0``
``action_top_percentile``  50                     ``action_top_percentile = 50``
=========================  =====================  =============================================

The colab's "temperature" multiplies the logits (``jax.random.categorical(rng, temperature *
logits)``): below 1 it flattens the distribution. Its top percentile keeps the logits strictly
above ``jnp.percentile(logits, q)``; here the percentile is taken over the game's valid actions
(the colab's over all 18) and the largest logit always survives (the colab would sample from an
all ``-inf`` row when the top logits tie at the percentile).

The workbench's earlier behaviour (and paper 003's MGDT protocol, inverse temperature 10) is
``attention="causal", single_return_token=False, loss_weighting="sum", kappa=10,
return_samples=1, return_temperature=1, action_sampling="greedy"``. Remaining differences from
the colab: actions are scored and sampled among the game's valid actions only; context steps
before an episode's start are masked out (the colab feeds zero frames); reward tokens are the
three signs (the colab's head also has an unused "terminal" class); with
``single_return_token=False`` only the newest step's return is sampled (the colab regenerates
the context's every return autoregressively). Runs trained before these settings existed used
the earlier behaviour; their ``config.json`` does not name the settings, so loading one applies
the defaults above unless its ``resolved.settings`` is given the earlier values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from workbench.algos.base import (
    Algo,
    EvalOptions,
    Explanation,
    FinetuneProtocol,
    Scale,
    Stage,
    StageContext,
    register,
    stage_iterator,
)
from workbench.algos.scaled_ql import SCALED_QL_FINETUNE, finetune_1pct_scale
from workbench.data.sampler import SequenceSampler
from workbench.games import geometry_of
from workbench.models.mgdt import (
    ATTENTIONS,
    LOSS_WEIGHTINGS,
    MGDT,
    PRESETS,
    SUITE_PATCH,
    count_parameters,
    mgdt_config,
    mgdt_losses,
    quantize_return,
    return_values,
    reward_token,
)
from workbench.models.world_action import ActionSpace

__all__ = [
    "ACTION_SAMPLINGS", "MGDTAlgo", "MGDTPolicy", "MGDTSettings", "MGDTSpec", "expert_return_logits",
    "sample_return_bins", "top_percentile_logits",
]

BATCH_KEYS = ("obs", "action", "reward", "return_to_go", "mask", "game_id")
ACTION_SAMPLINGS = ("sample", "greedy")


@dataclass(frozen=True)
class MGDTSettings:
    """MGDT's method settings; the defaults follow the public colab (module docstring)."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "attention": "causal", "single_return_token": False, "loss_weighting": "sum", "return_samples": 1,
        "return_temperature": 1.0, "return_top_percentile": None, "action_sampling": "greedy",
        "action_top_percentile": None,
    }
    """What a run recorded before these settings existed was trained and played with
    (``algos.base.recorded_settings``): its weights saw the plain causal mask."""

    kappa: float = 0.0
    """Inverse temperature of the expert re-weighting of the return distribution,
    exp(kappa * (R - R_low) / (R_high - R_low)); 0 (the colab's ``opt_weight``) samples returns
    from the model as they are; paper 003 compares with 10."""
    target_return: float | None = None
    """None: expert-action inference. A number: plain return conditioning on this return at an
    episode's start, decremented by each observed clipped reward."""
    weight_decay: float = 0.01
    """AdamW weight decay on the weight matrices (not on embeddings, norms and biases)."""
    patch: int = 0
    """Side of the observation patches in pixels (Atari) or grid cells (MinAtar); 0 = the suite's
    default (Atari 14, MGDT's; MinAtar 5, for speed). MinAtar with 1 is cell-sized patches, one token
    per cell (100 per frame instead of 4)."""
    attention: str = "patch_block"
    """``patch_block`` (colab): causal, and each frame's patch tokens see each other; ``causal``:
    the plain causal mask."""
    single_return_token: bool = True
    """True (the released model): only the context's first return token is read (and trained);
    False: a return token at every step."""
    loss_weighting: str = "colab"
    """``colab``: each cross-entropy divided by its number of classes (18 actions, the return
    bins, 4 reward classes), then averaged; ``sum``: the plain sum (``models.mgdt.mgdt_losses``)."""
    return_samples: int = 128
    """Target returns drawn per step; the highest is used (colab: 128; 1 = a plain sample)."""
    return_temperature: float = 0.75
    """Multiplier of the (re-weighted) return logits before sampling, as the colab's
    ``temperature * logits`` (colab: 0.75, which flattens the distribution)."""
    return_top_percentile: float | None = None
    """Only return logits above this percentile may be drawn (colab: None, all)."""
    action_sampling: str = "sample"
    """``sample`` (colab): draw the action from the tempered, top-percentile distribution;
    ``greedy``: the most likely valid action."""
    action_temperature: float = 1.0
    """Multiplier of the action logits before sampling (colab: 1.0)."""
    action_top_percentile: float | None = 50.0
    """Only actions whose logit lies above this percentile of the valid actions' logits may be
    drawn (colab: 50, the better half); None: every valid action."""

    def __post_init__(self) -> None:
        if not isinstance(self.patch, int) or self.patch < 0:
            raise ValueError(f"patch must be an int >= 0 (0 = the suite's default), got {self.patch!r}")
        if not (math.isfinite(self.kappa) and self.kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {self.kappa}")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ValueError(f"target_return must be a finite number or None, got {self.target_return}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name, valid in (("attention", ATTENTIONS), ("loss_weighting", LOSS_WEIGHTINGS),
                            ("action_sampling", ACTION_SAMPLINGS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        if not isinstance(self.single_return_token, bool):
            raise ValueError(f"single_return_token must be True or False, got {self.single_return_token!r}")
        if isinstance(self.return_samples, bool) or not isinstance(self.return_samples, int) or self.return_samples < 1:
            raise ValueError(f"return_samples must be an int >= 1, got {self.return_samples!r}")
        for name in ("return_temperature", "action_temperature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")
        for name in ("return_top_percentile", "action_top_percentile"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0 <= v < 100):
                raise ValueError(f"{name} must be None or a number in [0, 100), got {v}")


def expert_return_logits(return_logits: Tensor, values: Tensor, kappa: float, low: float, high: float) -> Tensor:
    """Log of ``P(R) * exp(kappa * (R - low) / (high - low))`` up to a constant, per return bin."""
    return return_logits.float().log_softmax(-1) + kappa * (values - low) / (high - low)


def top_percentile_logits(logits: Tensor, percentile: float | None) -> Tensor:
    """The colab's top-percentile filter: logits not strictly above the ``percentile``-th
    percentile (linear interpolation, ``jnp.percentile``'s) of the row's finite logits become
    ``-inf``; ``-inf`` entries (invalid actions) are left out of the percentile. The row's largest
    logit always stays (it is above the percentile unless the top logits tie at it). None: unchanged."""
    if percentile is None:
        return logits
    finite = torch.isfinite(logits)
    cut = torch.nanquantile(logits.double().masked_fill(~finite, float("nan")), percentile / 100.0, dim=-1,
                            keepdim=True)
    keep = (logits.double() > cut) | (logits == logits.max(dim=-1, keepdim=True).values)
    return logits.masked_fill(~keep, float("-inf"))


def sample_return_bins(logits: Tensor, samples: int, temperature: float, top_percentile: float | None,
                       generator: torch.Generator) -> Tensor:
    """The colab's optimistic return draw (``optimal_action``'s ``ret_sample_fn``): ``samples``
    draws per row from ``softmax(temperature * top_percentile(logits))``, keeping the highest bin
    (the highest return). ``(N, bins)`` CPU logits -> ``(N,)`` long bins."""
    probs = (temperature * top_percentile_logits(logits.float(), top_percentile)).softmax(-1)
    return torch.multinomial(probs, samples, replacement=True, generator=generator).max(dim=-1).values


class MGDTAlgo:
    """Network, loss, optimizer groups and policies of MGDT (module docstring)."""

    target_model: nn.Module | None = None  # no bootstrapping, no target network

    def __init__(self, model: MGDT, games: Sequence[str] | Sequence[int], config: MGDTSettings | None = None) -> None:
        self.model = model
        self.games = cast("tuple[str, ...] | tuple[int, ...]", tuple(games))
        self.actions = ActionSpace(self.games)
        cfg = model.cfg
        if config is None:
            config = MGDTSettings(attention=cfg.attention, single_return_token=cfg.single_return_token)
        built = {"attention": cfg.attention, "single_return_token": cfg.single_return_token}
        differ = {k: (getattr(config, k), v) for k, v in built.items() if getattr(config, k) != v}
        if differ:
            raise ValueError("the MGDT settings and the model disagree: " + "; ".join(
                f"{k} is {a!r} in the settings, {b!r} in the model" for k, (a, b) in differ.items())
                + " (MGDTAlgo.build builds the model from the settings)")
        self.config = config

    @classmethod
    def build(cls, preset: str, games: Sequence[str] | Sequence[int], config: MGDTSettings | None = None,
              *, seed: int = 0, **overrides: Any) -> MGDTAlgo:
        """Model preset (``mgdt-10m``, ``mgdt-40m``, ``mgdt-200m``, ``mgdt-tiny``), weights from
        ``seed``; ``overrides`` go to the model config."""
        config = config or MGDTSettings()
        names = [g for g in games if isinstance(g, str)]
        suite = geometry_of(names).suite if names else "atari"
        overrides = {"suite": suite, "patch": SUITE_PATCH[suite], "attention": config.attention,
                     "single_return_token": config.single_return_token, **overrides}
        cfg = mgdt_config(preset, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MGDT(cfg)
        return cls(model, games, config)

    @property
    def context_steps(self) -> int:
        return self.model.cfg.context_steps

    def to(self, device: torch.device | str) -> MGDTAlgo:
        self.model.to(device)
        return self

    def to_channels_last(self) -> MGDTAlgo:
        """Nothing to do: no convolutions."""
        return self

    def update_target(self) -> None:
        """No target network."""

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        """The model's parts for partial loading (``workbench.transfer``): the token embeddings,
        the transformer and the prediction heads. None is per game: a new game needs no new rows
        (its valid actions come from its name)."""
        return {"embeddings": ("patch_emb.", "return_emb.", "action_emb.", "reward_emb."),
                "transformer": ("gpt.",), "heads": ("return_head.", "action_head.", "reward_head.")}

    def game_rows(self, games: Sequence[str] | Sequence[int]) -> dict[str, tuple[int, ...]]:
        return {}

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight matrices decay, embeddings, norms and biases do not."""
        decay: list[Tensor] = []
        no_decay: list[Tensor] = []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.config.weight_decay, "name": "decay"},
                {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]

    def count_parameters(self) -> dict[str, int]:
        return count_parameters(self.model)

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and detached metrics of a sequence batch with returns-to-go."""
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"MGDT batch lacks {missing}; expected {list(BATCH_KEYS)} (SequenceSampler with "
                           "returns_to_go=True)")
        frames, game_id, mask = batch["obs"], batch["game_id"], batch["mask"].bool()
        if frames.shape[1] > self.context_steps:
            raise ValueError(f"batch has {frames.shape[1]} steps, the model reads {self.context_steps}")
        # Masked (padding) steps hold action 0, a valid minimal index of every game.
        actions = self.actions.full(batch["action"], game_id)
        bins = quantize_return(batch["return_to_go"], self.model.cfg)
        rewards = reward_token(batch["reward"])
        out = self.model(frames, bins, actions, rewards)
        return mgdt_losses(out, bins, actions, rewards, mask, self.actions.valid_mask(game_id),
                           weighting=self.config.loss_weighting, single_return_token=self.model.cfg.single_return_token)

    def policy(self, options: EvalOptions | None = None, *, seed: int = 0) -> MGDTPolicy:
        """Expert-action inference (or plain return conditioning, ``target_return``)."""
        return MGDTPolicy(self, seed=seed)

    def inspectable_policy(self, options: EvalOptions | None = None) -> MGDTPolicy:
        """The same policy: ``act_explained`` shows its action distribution and target return."""
        return MGDTPolicy(self)


class MGDTPolicy:
    """Acts with an MGDT: per environment row, a context of its last ``context_steps - 1`` executed
    steps plus the current frame (module docstring). Row i is environment slot i throughout
    (``workbench.evaluate``); ``observe`` must follow every ``act``.

    Target returns and sampled actions come from one CPU generator seeded with ``seed``, so a
    policy's decisions are a function of its seed and what it saw (bit-reproducible on CPU).

    With ``single_return_token`` the action is conditioned on the return of the context's first
    real step, as in the colab's ``optimal_action``: expert inference re-samples that return at
    every step from the model's prediction at that step's frame; plain conditioning uses the
    return-to-go the row had at that step."""

    def __init__(self, algo: MGDTAlgo, *, seed: int = 0) -> None:
        self.algo = algo
        self.model = algo.model
        self.cfg = algo.model.cfg
        self.settings = algo.config
        self.generator = torch.Generator().manual_seed(seed)
        self._rows = 0
        self._pending: dict[str, np.ndarray] | None = None  # the last act's frames, bins, game ids

    # ---- state per row: the last K = context_steps - 1 executed steps, newest last
    def _ensure(self, n: int) -> None:
        if n == self._rows:
            return
        if self._rows:
            raise ValueError(f"this policy acts for {self._rows} environments, got a batch of {n}; build a new "
                             "policy (or reset) for another number of environments")
        K = self.cfg.context_steps - 1
        self._rows = n
        self.frames = np.zeros((n, K, *self.cfg.geometry.frame_shape), np.uint8)
        self.bins = np.zeros((n, K), np.int64)
        self.targets = np.zeros((n, K), np.float64)  # the return each step was conditioned on
        self.ale_actions = np.zeros((n, K), np.int64)
        self.reward_tokens = np.zeros((n, K), np.int64)
        self.length = np.zeros(n, np.int64)
        self.return_to_go = np.zeros(n, np.float64)
        self._fresh = np.ones(n, bool)  # no step taken since the last reset

    def reset(self, indices: np.ndarray) -> None:
        if not self._rows:
            return  # nothing remembered yet; the first act starts every row fresh
        idx = np.asarray(indices, np.int64)
        self.length[idx] = 0
        self._fresh[idx] = True

    # ---- acting
    def act(self, obs: np.ndarray, game_ids: np.ndarray) -> np.ndarray:
        return self.act_explained(obs, game_ids, explain=False)[0]

    def act_explained(self, obs: np.ndarray, game_ids: np.ndarray, explain: bool = True
                      ) -> tuple[np.ndarray, list[Explanation]]:
        shape = self.cfg.geometry.frame_shape
        if obs.dtype != np.uint8 or obs.ndim != 4 or obs.shape[2:] != shape:
            raise TypeError(f"obs must be uint8 (N, 4, {shape[0]}, {shape[1]}), got {obs.dtype} {obs.shape}")
        n = obs.shape[0]
        self._ensure(n)
        cfg, settings = self.cfg, self.settings
        L, K = cfg.context_steps, cfg.context_steps - 1
        if settings.target_return is not None:
            self.return_to_go[self._fresh] = settings.target_return
        device = next(self.model.parameters()).device
        # Context, left-padded: the current step sits at position L - 1 of every row.
        frames = np.zeros((n, L, *shape), np.uint8)
        frames[:, :K], frames[:, K] = self.frames, obs[:, -1]
        now_bin = quantize_return(torch.from_numpy(self.return_to_go), cfg).numpy()
        bins = np.concatenate([self.bins, now_bin[:, None]], 1)
        targets = np.concatenate([self.targets, self.return_to_go[:, None]], 1)
        acts = np.concatenate([self.ale_actions, np.zeros((n, 1), np.int64)], 1)
        rews = np.concatenate([self.reward_tokens, np.ones((n, 1), np.int64)], 1)
        valid = np.arange(L)[None] >= (K - self.length)[:, None]
        rows = np.arange(n)
        # the step whose return token the action reads: the first real one, or the current one
        at = K - self.length if cfg.single_return_token else np.full(n, K)

        def t(x: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        g = torch.from_numpy(np.asarray(game_ids, np.int64))
        was = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                values = return_values(cfg)
                # 1. the return distribution at the frame of step `at` (what follows that frame in
                # the sequence cannot reach its patch tokens, so the placeholders do not matter)
                ret_logits = None
                if settings.target_return is None or explain:
                    ret_logits = self.model(t(frames), t(bins), t(acts), t(rews), t(valid))["return"]
                    ret_logits = ret_logits[torch.from_numpy(rows), torch.from_numpy(at)].float().cpu()
                draw_p = None
                if ret_logits is not None and settings.target_return is None:
                    weighted = expert_return_logits(ret_logits, values, settings.kappa, cfg.return_min, cfg.return_max)
                    drawn = sample_return_bins(weighted, settings.return_samples, settings.return_temperature,
                                               settings.return_top_percentile, self.generator)
                    bins[rows, at] = drawn.numpy()
                    targets[rows, at] = values[drawn].double().numpy()
                    draw_p = (settings.return_temperature
                              * top_percentile_logits(weighted, settings.return_top_percentile)).softmax(-1)
                # 2. the action conditioned on that return
                act_logits = self.model(t(frames), t(bins), t(acts), t(rews), t(valid))["action"][:, -1].float().cpu()
        finally:
            self.model.train(was)
        valid_ale = self.algo.actions.valid_mask(g)
        logits = act_logits.masked_fill(~valid_ale, float("-inf"))
        if settings.action_sampling == "greedy":
            probs = logits.softmax(-1)
            ale = probs.argmax(-1)
        else:
            probs = (settings.action_temperature * top_percentile_logits(logits, settings.action_top_percentile)
                     ).softmax(-1)
            ale = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        actions = self.algo.actions.to_minimal[g, ale].numpy()
        conditioned = targets[rows, at]
        self._pending = {"frame": obs[:, -1].copy(), "bin": bins[:, K].copy(), "target": targets[:, K].copy(),
                         "game_id": g.numpy()}
        explanations: list[Explanation] = []
        if explain:
            # the distribution the action was drawn from (greedy: the model's), minimal slot order
            slots = torch.gather(probs, 1, self.algo.actions.slot_order[g]).numpy()
            assert ret_logits is not None  # computed whenever explaining
            model_p = ret_logits.softmax(-1).numpy()
            for i in range(n):
                extra: dict[str, Any] = {"conditioned_return": float(conditioned[i]), "return_probs": model_p[i]}
                if draw_p is not None:
                    extra["expert_return_probs"] = draw_p[i].numpy()  # what each of the draws came from
                explanations.append(Explanation(q_values=slots[i], extra=extra))
        return actions.astype(np.int64), explanations

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Append the executed step (the acted-on frame, its return token, the executed action and
        the reward's sign) to each row's context; the return-to-go drops by the clipped reward."""
        p = self._pending
        if p is None:
            raise RuntimeError("observe() without a preceding act(): nothing to attach the step to")
        self._pending = None
        clipped = np.clip(np.asarray(rewards, np.float64), -1.0, 1.0)
        ale = self.algo.actions.full(torch.from_numpy(np.asarray(actions, np.int64)),
                                     torch.from_numpy(p["game_id"])).numpy()
        K = self.cfg.context_steps - 1
        if K:
            for arr, new in ((self.frames, p["frame"]), (self.bins, p["bin"]), (self.targets, p["target"]),
                             (self.ale_actions, ale), (self.reward_tokens, np.sign(clipped).astype(np.int64) + 1)):
                arr[:, :-1] = arr[:, 1:].copy()
                arr[:, -1] = new
            self.length = np.minimum(self.length + 1, K)
        self.return_to_go = p["target"] - clipped
        self._fresh[:] = False


# ------------------------------------------------------------------------------- registry


class MGDTSpec:
    """MGDT: one training stage on 4-step sequences with returns-to-go."""

    name = "mgdt"
    label = "MGDT"
    description = "Multi-Game Decision Transformer with expert-action inference (Lee et al. 2022)"
    settings_class: type = MGDTSettings
    metric_prefixes: tuple[str, ...] = ("loss/", "dt/")
    suites: tuple[str, ...] = ("atari", "minatar")
    curves: tuple[str, ...] = ("loss/total", "loss/action", "loss/return", "loss/reward", "dt/action_accuracy")
    # "DT (pre-trained)" of paper 000's Figure 7 (Lee et al.'s protocol, which paper 000 follows):
    # Scaled QL's budget (1% of a run), batch, lr and steps, drawn in whole episodes: a decision
    # transformer trains on segments, and 1% of single transitions leaves it ~1-step segments
    # (workbench.data.splits); every weight transfers; no target network.
    finetune: FinetuneProtocol | None = FinetuneProtocol(
        name="mgdt", paper_split="finetune_1pct_episodes", held_out_games=SCALED_QL_FINETUNE.held_out_games,
        methods=("dt_transfer", "scratch"), pretrained_methods=("dt_transfer",),
        scale_fn=functools.partial(finetune_1pct_scale, target_period=False),
    )

    def model_presets(self) -> tuple[str, ...]:
        return tuple(PRESETS)

    def default_model(self) -> str:
        return "mgdt-tiny"

    def scale(self, preset: str, model: str) -> Scale:
        if preset == "paper":
            # The budget of the other baselines (paper 000, Table B.1: 10M steps at batch 512).
            return Scale(steps=10_000_000, batch_size=512, eval_max_steps=27_000, eval_episodes=16)
        steps, batch, cap = (300, 32, 1000) if model.endswith("-tiny") else (20, 8, 250)
        return Scale(steps=steps, batch_size=batch, eval_max_steps=cap, log_every=5, checkpoint_every=100,
                     games_per_batch=min(8, batch))

    def stages(self, settings: Any, scale: Scale, batch_size: int, lr: float) -> list[Stage]:
        # 1e-4: the learning rate of JOWA's MGDT re-implementation (paper 003, Table 12).
        return [Stage("train", "", scale.steps, lr or 1e-4, settings.weight_decay, target_update_period=0)]

    def settings_from_data(self, settings: Any, store: Path, games: Sequence[str]) -> dict[str, Any]:
        """None: returns-to-go use the clipped rewards of every game alike."""
        return {}

    def build(self, model: str, games: Sequence[str], settings: Any, seed: int) -> Algo:
        overrides = {"patch": settings.patch} if settings.patch else {}
        return MGDTAlgo.build(model, games, settings, seed=seed, **overrides)

    def enter_stage(self, algo: Algo, stage: str, context: StageContext) -> None:
        """One stage, nothing to prepare."""

    def batches(self, algo: Algo, stage: str, context: StageContext) -> Any:
        assert isinstance(algo, MGDTAlgo)
        return stage_iterator(SequenceSampler(
            context.store, context.games, context.batch_size, seq_len=algo.context_steps, seed=context.seed,
            stratified=True, games_per_batch=context.games_per_batch, rank=context.rank,
            world_size=context.world_size, returns_to_go=True,
        ))


register(MGDTSpec())

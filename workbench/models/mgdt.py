"""The Multi-Game Decision Transformer network (Lee et al. 2022, "Multi-Game Decision Transformers").

Each time step of the context becomes ``36 + 3`` tokens, in this order::

    o_t (36 patch tokens) | R_t (return-to-go bin) | a_t (ALE action) | r_t (reward sign)

- the observation is the newest 84x84 frame cut into 6 x 6 = 36 patches of 14 x 14 pixels, each
  embedded linearly (the GPT's learned position embeddings tell the patches apart);
- the return-to-go is quantized into ``num_return_bins`` bins of equal width over
  ``[return_min, return_max)`` (MGDT: 120 bins over [-20, 100] of clipped-reward returns);
- actions are the 18 ALE actions shared by every game, so a token means the same button in all;
- the reward is its sign (-1, 0, +1), as in MGDT.

A causal GPT (``models/gpt.py``) reads ``context_steps`` such steps (MGDT: 4) and three heads
read its outputs (MGDT's prediction targets, each at the last token that may see its inputs):

- the return head at the last observation token of step t predicts R_t from o_<=t and the past;
- the action head at the R_t token predicts a_t: it sees its own return (with
  ``single_return_token``, the context's first return: see below), never its future;
- the reward head at the a_t token predicts the sign of r_t.

Like MGDT, the network has no game embedding: the game is recognised from the frames.

Two switches of :class:`MGDTConfig` follow the public model (google-research ``multi_game_dt``,
``Multi_game_decision_transformers_public_colab.ipynb``, ``DecisionTransformer.__call__``) by default:

- ``attention="patch_block"``: the causal mask plus, per step, a block in which the frame's patch
  tokens all see each other (the colab's ``np.logical_or(sequential_causal_mask, block_diag)``);
  ``"causal"`` is the plain lower-triangular mask (:func:`attention_mask` builds either);
- ``single_return_token=True`` (the released model's ``single_return_token = True``): only the
  first real step's return token enters the sequence; the others are zeroed (position included)
  and no query attends to them (the colab's ``ret_mask.at[:, 1:].set(0)`` as input and key mask),
  and only the first step's return is a target (:func:`mgdt_losses`). False: a return token per
  step, each a target.

:func:`mgdt_losses` weights the three cross-entropies as the colab does by default
(``weighting="colab"``: each a mean over tokens *and classes*, then their mean).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workbench.games import MAX_ACTIONS
from workbench.geometry import ATARI, GEOMETRIES, FrameGeometry
from workbench.models.gpt import GPT, GPTConfig

__all__ = [
    "ATTENTIONS", "COLAB_REWARD_CLASSES", "LOSS_WEIGHTINGS", "MGDT", "MGDTConfig", "PRESETS", "attention_mask",
    "count_parameters", "dequantize_return", "mgdt_config", "mgdt_losses", "patchify", "quantize_return",
    "return_token_kept", "return_values", "reward_token",
]

STEP_EXTRA_TOKENS = 3  # return, action, reward

ATTENTIONS = ("patch_block", "causal")
"""Attention patterns: the colab's (causal, plus each frame's patch tokens seeing each other) and
the plain causal mask."""
LOSS_WEIGHTINGS = ("colab", "sum")
"""How :func:`mgdt_losses` combines its three cross-entropies (its docstring)."""
COLAB_REWARD_CLASSES = 4
"""Width of the colab's reward head (``ATARI_NUM_REWARDS = 4``: none, positive, terminal, negative;
its ``encode_reward`` never emits "terminal"), which divides its reward loss. Ours has the three
signs; the colab weighting keeps the colab's divisor, so the weights are the released model's."""


@dataclass(frozen=True)
class MGDTConfig:
    """Shape of an MGDT network."""

    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 512
    context_steps: int = 4
    """Time steps the transformer reads (MGDT: 4)."""
    patch: int = 14
    """Side of the square observation patches (MGDT: 14, i.e. 6 x 6 patches of an 84x84 frame;
    MinAtar: 1, one patch per grid cell holding all its channels)."""
    suite: str = "atari"
    """Frame geometry of the games (``workbench.geometry``); set from the games at build time."""
    num_return_bins: int = 120
    """Return-to-go bins (MGDT: 120)."""
    return_min: float = -20.0
    """Lower edge of the first return bin (MGDT: -20); lower returns fall into the first bin."""
    return_max: float = 100.0
    """Upper edge of the last return bin (MGDT: 100); higher returns fall into the last bin."""
    dropout: float = 0.1
    attention: str = "patch_block"
    """``"patch_block"`` (the colab's): causal, and the patch tokens of one frame see each other;
    ``"causal"``: plain causal mask (each patch sees only the patches before it)."""
    single_return_token: bool = True
    """True (the released model's): only the first real step's return token enters the sequence
    (and is a target); False: one return token per step."""

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}; got {self.attention!r}")
        if not isinstance(self.single_return_token, bool):
            raise ValueError(f"single_return_token must be True or False, got {self.single_return_token!r}")
        side = self.geometry.plane_shape
        if self.patch < 1 or side[0] % self.patch or side[1] % self.patch:
            raise ValueError(f"patch must divide the {side} frame, got {self.patch}")
        if self.context_steps < 1:
            raise ValueError(f"context_steps must be >= 1, got {self.context_steps}")
        if self.num_return_bins < 2 or not self.return_max > self.return_min:
            raise ValueError(
                f"need num_return_bins >= 2 and return_max > return_min, got {self.num_return_bins} bins over "
                f"[{self.return_min}, {self.return_max}]"
            )
        self.gpt  # noqa: B018  (validates the transformer shape)

    @property
    def geometry(self) -> FrameGeometry:
        return GEOMETRIES[self.suite]

    @property
    def patches(self) -> int:
        h, w = self.geometry.plane_shape
        return (h // self.patch) * (w // self.patch)

    @property
    def patch_dim(self) -> int:
        """Values per patch token: patch x patch pixels of every plane."""
        return self.geometry.planes * self.patch * self.patch

    @property
    def tokens_per_step(self) -> int:
        return self.patches + STEP_EXTRA_TOKENS

    @property
    def bin_width(self) -> float:
        return (self.return_max - self.return_min) / self.num_return_bins

    @property
    def gpt(self) -> GPTConfig:
        return GPTConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         max_tokens=self.context_steps * self.tokens_per_step, dropout=self.dropout)


# MGDT's three sizes (Lee et al. 2022; layers/width/heads of the 40M and 200M models as JOWA's
# Table 13 restates them), and a CPU smoke size.
PRESETS: dict[str, MGDTConfig] = {
    "mgdt-10m": MGDTConfig(n_layer=4, n_head=8, n_embd=512),
    "mgdt-40m": MGDTConfig(n_layer=6, n_head=12, n_embd=768),
    "mgdt-200m": MGDTConfig(n_layer=10, n_head=20, n_embd=1280),
    "mgdt-tiny": MGDTConfig(n_layer=2, n_head=2, n_embd=64, dropout=0.0),
}


#: Patch side per suite: MGDT's 14 pixels on Atari; 5x5 cells on MinAtar, for CPU speed (the rates of
#: each size are in docs/minatar_study.md; MGDTSettings.patch picks another).
SUITE_PATCH = {"atari": 14, "minatar": 5}


def mgdt_config(name: str, **overrides: Any) -> MGDTConfig:
    """Preset by name, optionally with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown MGDT model preset {name!r}; valid: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# ------------------------------------------------------------------------------- tokens


def patchify(frames: torch.Tensor, patch: int, geometry: FrameGeometry = ATARI) -> torch.Tensor:
    """``(..., H, W)`` frames of ``geometry`` -> ``(..., P, planes * patch * patch)``: the patches
    in row-major order (patch k covers rows ``(k // n) * patch ..`` and columns ``(k % n) * patch ..``
    of every plane, n = w / patch), each flattened plane by plane, row by row."""
    if tuple(frames.shape[-2:]) != geometry.frame_shape:
        raise ValueError(f"frames must end in {geometry.frame_shape}, got {tuple(frames.shape)}")
    (h, w), c = geometry.plane_shape, geometry.planes
    nh, nw = h // patch, w // patch
    lead = frames.shape[:-2]
    x = frames.reshape(*lead, c, nh, patch, nw, patch)
    x = x.permute(*range(len(lead)), -4, -2, -5, -3, -1)  # (..., row block, col block, plane, py, px)
    return x.reshape(*lead, nh * nw, c * patch * patch)


def quantize_return(returns: torch.Tensor, cfg: MGDTConfig) -> torch.Tensor:
    """Bin index (long) of each return: ``floor((R - return_min) / width)``, clipped to the bins."""
    idx = torch.floor((returns.double() - cfg.return_min) / cfg.bin_width)
    return idx.clamp(0, cfg.num_return_bins - 1).long()


def dequantize_return(bins: torch.Tensor, cfg: MGDTConfig) -> torch.Tensor:
    """The return a bin stands for: its lower edge (exact for integer returns with MGDT's width 1)."""
    return (cfg.return_min + bins.double() * cfg.bin_width).float()


def return_values(cfg: MGDTConfig, device: Any = None) -> torch.Tensor:
    """(num_return_bins,) float: the return of every bin."""
    return dequantize_return(torch.arange(cfg.num_return_bins, device=device), cfg)


def reward_token(rewards: torch.Tensor) -> torch.Tensor:
    """Reward sign as a token: -1 -> 0, 0 -> 1, +1 -> 2."""
    return (torch.sign(rewards) + 1).long()


# ------------------------------------------------------------------------------- attention


def return_token_kept(cfg: MGDTConfig, steps: int, valid: torch.Tensor | None = None,
                      device: Any = None) -> torch.Tensor:
    """``(B|1, steps)`` bool: which steps' return tokens enter the sequence. All of them, or with
    ``single_return_token`` only the first real step's (``valid`` ``(B, steps)``; step 0 without it)."""
    if valid is not None:
        device = valid.device
    if not cfg.single_return_token:
        return torch.ones(1 if valid is None else valid.shape[0], steps, dtype=torch.bool, device=device)
    first = (torch.zeros(1, dtype=torch.long, device=device) if valid is None
             else valid.long().argmax(dim=1))  # first True (0 for a row without one)
    return torch.arange(steps, device=device)[None] == first[:, None]


def _tokens_kept(cfg: MGDTConfig, steps: int, valid: torch.Tensor | None, device: Any) -> torch.Tensor:
    """``(B|1, steps * tokens_per_step)`` bool: False at the dropped return tokens."""
    kept = return_token_kept(cfg, steps, valid, device)
    not_return = torch.arange(cfg.tokens_per_step, device=kept.device) != cfg.patches
    return (not_return[None, None] | kept[:, :, None]).reshape(kept.shape[0], -1)


def attention_mask(cfg: MGDTConfig, steps: int, valid: torch.Tensor | None = None,
                   device: Any = None) -> torch.Tensor:
    """``(B|1, 1, L, L)`` bool (True = query row may attend to key column) over the
    ``L = steps * tokens_per_step`` tokens of ``steps`` steps.

    Query i may attend to key j when j <= i, or (``attention="patch_block"``) i and j are patch
    tokens of the same step; and key j is a real token (``valid`` ``(B, steps)``: False = left
    padding) that enters the sequence (not a dropped return token, :func:`return_token_kept`).
    A padding query sees only itself (its output is never used; a row with no key would be NaN)."""
    if valid is not None:
        device = valid.device
    S, P = cfg.tokens_per_step, cfg.patches
    L = steps * S
    idx = torch.arange(L, device=device)
    pattern = idx[None, :] <= idx[:, None]
    if cfg.attention == "patch_block":
        step, is_patch = idx // S, idx % S < P
        pattern = pattern | ((step[:, None] == step[None, :]) & is_patch[:, None] & is_patch[None, :])
    keys = _tokens_kept(cfg, steps, valid, device)  # (B|1, L)
    if valid is not None:
        real = valid[:, :, None].expand(-1, -1, S).reshape(valid.shape[0], L)
        keys = keys & real
    mask = pattern[None] & keys[:, None, :]
    if valid is not None:
        mask = mask | (torch.eye(L, dtype=torch.bool, device=device)[None] & ~real[:, :, None])
    return mask[:, None]


# ------------------------------------------------------------------------------- network


class MGDT(nn.Module):
    """Token embeddings, the GPT and the return/action/reward heads (module docstring)."""

    def __init__(self, cfg: MGDTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.patch_emb = nn.Linear(cfg.patch_dim, d)
        self.return_emb = nn.Embedding(cfg.num_return_bins, d)
        self.action_emb = nn.Embedding(MAX_ACTIONS, d)
        self.reward_emb = nn.Embedding(3, d)
        self.gpt = GPT(cfg.gpt)
        self.return_head = nn.Linear(d, cfg.num_return_bins)
        self.action_head = nn.Linear(d, MAX_ACTIONS)
        self.reward_head = nn.Linear(d, 3)
        for m in (self.patch_emb, self.return_emb, self.action_emb, self.reward_emb,
                  self.return_head, self.action_head, self.reward_head):
            GPT.init_weights(m)

    def embed(self, frames: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor,
              rewards: torch.Tensor) -> torch.Tensor:
        """``(B, T, H, W)`` uint8 frames, ``(B, T)`` return bins, ALE actions and reward tokens
        -> ``(B, T * tokens_per_step, n_embd)`` in the step order of the module docstring."""
        B, T = frames.shape[:2]
        if T > self.cfg.context_steps:
            raise ValueError(f"{T} steps exceed the model's context of {self.cfg.context_steps}")
        pixels = patchify(frames, self.cfg.patch, self.cfg.geometry).to(self.patch_emb.weight.dtype) / 127.5 - 1.0
        obs = self.patch_emb(pixels)  # (B, T, P, d)
        extra = torch.stack([self.return_emb(returns), self.action_emb(actions), self.reward_emb(rewards)], dim=2)
        return torch.cat([obs, extra], dim=2).reshape(B, T * self.cfg.tokens_per_step, -1)

    def encode(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The GPT's blocks over embedded tokens ``x`` ``(B, steps * tokens_per_step, n_embd)``
        under :func:`attention_mask`; returns the final-LayerNorm hidden states.

        Positions as ``models.gpt.GPT``'s: 0.. over the real tokens of a row (left padding gets
        none). Dropped return tokens (``single_return_token``) enter as zeros, their position
        embedding included, as the colab multiplies its token mask into the sequence."""
        cfg, gpt = self.cfg, self.gpt
        B, L, _ = x.shape
        S = cfg.tokens_per_step
        if L % S:
            raise ValueError(f"{L} tokens are not whole steps of {S}")
        steps = L // S
        if valid is None:
            pos = torch.arange(L, device=x.device)[None]
        else:
            real = valid[:, :, None].expand(B, steps, S).reshape(B, L)
            pos = (torch.cumsum(real.long(), dim=1) - 1).clamp(min=0)
        x = x + gpt.pos_emb(pos)
        if cfg.single_return_token:
            x = x * _tokens_kept(cfg, steps, valid, x.device)[:, :, None].to(x.dtype)
        # The plain causal mask without padding is exactly is_causal=True (flash attention).
        plain = cfg.attention == "causal" and not cfg.single_return_token and valid is None
        mask = None if plain else attention_mask(cfg, steps, valid, x.device)
        x = gpt.drop(x)
        for i, block in enumerate(gpt.blocks):
            x = block(x, mask, None, i)
        return gpt.ln_f(x)

    def forward(self, frames: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per step: ``return`` (B, T, bins), ``action`` (B, T, 18), ``reward`` (B, T, 3).

        ``valid`` ``(B, T)`` bool marks real steps; False = left padding (inference batches of
        environments with contexts of different lengths), which no real token attends to."""
        B, T = frames.shape[:2]
        x = self.embed(frames, returns, actions, rewards)
        h = self.encode(x, valid).reshape(B, T, self.cfg.tokens_per_step, -1)
        P = self.cfg.patches
        return {
            "return": self.return_head(h[:, :, P - 1]),  # last observation token
            "action": self.action_head(h[:, :, P]),  # the return token
            "reward": self.reward_head(h[:, :, P + 1]),  # the action token
        }


def mgdt_losses(out: dict[str, torch.Tensor], return_bins: torch.Tensor, actions: torch.Tensor,
                rewards: torch.Tensor, mask: torch.Tensor, valid_actions: torch.Tensor, *,
                weighting: str = "colab", single_return_token: bool = True
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective and its metrics; actions are scored among the game's valid ALE
    actions only (``valid_actions`` ``(B, 18)``), over real steps (``mask`` ``(B, T)``).

    Per head, ``CE`` is the mean cross-entropy over its targets: every real step's action and
    reward sign, and every real step's return bin, or with ``single_return_token`` only the first
    real step's (the colab's ``ret_target[:, :1]``). ``weighting``:

    - ``"colab"`` (the colab's ``sequence_loss``): ``cross_entropy`` is ``jnp.mean`` over tokens
      *and classes*, so each CE is divided by its head's width, and the loss is their mean:
      ``(CE_action / 18 + CE_return / num_return_bins + CE_reward / 4) / 3`` (4: the colab's reward
      classes, :data:`COLAB_REWARD_CLASSES`); with 120 bins the reward weighs 30x the return;
    - ``"sum"``: ``CE_action + CE_return + CE_reward``.

    The ``loss/return``, ``loss/action``, ``loss/reward`` metrics are the unweighted CEs;
    ``loss/total`` is the returned objective."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}")
    m = mask.float()
    if single_return_token:
        first = mask.long().argmax(dim=1, keepdim=True)  # the first real step of each row
        m_ret = torch.zeros_like(m).scatter(1, first, m.gather(1, first))
    else:
        m_ret = m

    def ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        per = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
        return (per * weight.flatten()).sum() / weight.sum().clamp(min=1.0)

    action_logits = out["action"].float().masked_fill(~valid_actions[:, None, :], float("-inf"))
    l_ret = ce(out["return"], return_bins, m_ret)
    l_act, l_rew = ce(action_logits, actions, m), ce(out["reward"], rewards, m)
    if weighting == "colab":
        total = (l_act / out["action"].shape[-1] + l_ret / out["return"].shape[-1] + l_rew / COLAB_REWARD_CLASSES) / 3
    else:
        total = l_ret + l_act + l_rew
    with torch.no_grad():
        hit = (action_logits.argmax(-1) == actions).float()
        metrics = {"loss/return": l_ret.detach(), "loss/action": l_act.detach(), "loss/reward": l_rew.detach(),
                   "loss/total": total.detach(), "dt/action_accuracy": (hit * m).sum() / m.sum().clamp(min=1.0)}
    return total, metrics


def count_parameters(model: MGDT) -> dict[str, int]:
    """Parameters by part: transformer (blocks, norms, positions), embeddings, heads, total."""
    def size(mod: nn.Module) -> int:
        return sum(p.numel() for p in mod.parameters())

    emb = sum(size(m) for m in (model.patch_emb, model.return_emb, model.action_emb, model.reward_emb))
    heads = sum(size(m) for m in (model.return_head, model.action_head, model.reward_head))
    return {"transformer": size(model.gpt), "embeddings": emb, "heads": heads, "total": size(model)}


if __name__ == "__main__":  # python -m workbench.models.mgdt: the README table
    print("| preset | layers / width / heads | transformer | embeddings | heads | total | MGDT paper |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    paper = {"mgdt-10m": "10M", "mgdt-40m": "40M", "mgdt-200m": "200M", "mgdt-tiny": "CPU smoke size"}
    for name, c in PRESETS.items():
        with torch.device("meta"):
            counts = count_parameters(MGDT(c))
        cells = " | ".join(f"{counts[k] / 1e6:.2f}M" for k in ("transformer", "embeddings", "heads", "total"))
        print(f"| {name} | {c.n_layer} / {c.n_embd} / {c.n_head} | {cells} | {paper[name]} |")

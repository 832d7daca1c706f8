"""GPT backbone for the JOWA world-action model, with a preallocated KV cache.

nanoGPT-style pre-LayerNorm transformer on ``torch.nn.functional.scaled_dot_product_attention``.
Attention masks are always built here (a boolean causal mask, plus per-sample key padding for
left-padded batches), never delegated to a fused kernel's implicit conventions, so the weights,
the masks and the result do not depend on which attention backend (math, flash, memory-efficient,
cuDNN) PyTorch picks. ``is_causal=True`` is used only where it is exactly the explicit mask
(no cache, no padding, square attention), which lets flash attention run during training.

The cache (`KVCache`) holds every layer's keys and values in one preallocated tensor, supports
batched incremental decoding (any number of new tokens per call) and beam search: rows are
gathered with ``cache.index_select(batch_idx)`` in one indexing op, never per beam in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Transformer hyperparameters (JOWA Tables 9-10)."""

    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 512
    max_tokens: int = 296
    """Context length in tokens: 8 steps x (36 observation + 1 action) tokens."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches (Table 9)."""
    bias: bool = True

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if min(self.n_layer, self.n_head, self.n_embd, self.max_tokens) < 1:
            raise ValueError("n_layer, n_head, n_embd and max_tokens must all be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Keys and values of all layers for a batch of sequences, preallocated to ``capacity`` slots.

    ``k``/``v``: ``(n_layer, B, n_head, capacity, head_dim)``; the first ``length`` slots are
    filled (the same count for every row, so a batch advances in lockstep). ``valid``
    ``(B, capacity)`` marks real tokens; False marks left padding, which no query attends to.
    ``next_pos`` ``(B,)`` is each row's next position id (rows with different amounts of left
    padding have different positions at the same slot).
    """

    def __init__(
        self, n_layer: int, batch: int, n_head: int, capacity: int, head_dim: int,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch, n_head, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, capacity, device=device, dtype=torch.bool)
        self.next_pos = torch.zeros(batch, device=device, dtype=torch.long)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def index_select(self, batch_idx: torch.Tensor) -> KVCache:
        """A new cache whose row i is a copy of row ``batch_idx[i]`` of this one (beam gather).

        Only the filled slots are copied; the rest of the new cache is preallocated.
        """
        batch_idx = batch_idx.to(self.k.device, torch.long)
        out = KVCache.__new__(KVCache)
        n_layer, _, n_head, cap, hd = self.k.shape
        # Slots past `length` are always written before they are read: no need to zero them.
        out.k = self.k.new_empty((n_layer, batch_idx.numel(), n_head, cap, hd))
        out.v = torch.empty_like(out.k)
        n = self.length
        out.k[:, :, :, :n] = self.k[:, batch_idx, :, :n]
        out.v[:, :, :, :n] = self.v[:, batch_idx, :, :n]
        out.valid = self.valid[batch_idx].clone()
        out.next_pos = self.next_pos[batch_idx].clone()
        out.length = n
        return out

    def clone(self) -> KVCache:
        """A deep copy (what a per-beam implementation has to do for every child)."""
        return self.index_select(torch.arange(self.batch_size, device=self.k.device))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None,
        cache: KVCache | None = None, layer: int = 0,
    ) -> torch.Tensor:
        """``attn_mask`` is a bool ``(B|1, 1, T, S)`` (True = attend) or None for plain causal."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start:start + T] = k.to(cache.k.dtype)
            cache.v[layer, :, :, start:start + T] = v.to(cache.v.dtype)
            k = cache.k[layer, :, :, :start + T].to(q.dtype)
            v = cache.v[layer, :, :, :start + T].to(q.dtype)
        dropout_p = self.attn_dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias),
            nn.Dropout(cfg.dropout),
        )

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Transformer over already-embedded tokens; adds learned position embeddings.

    Token (and task) embeddings belong to the caller (`WorldActionModel`), which knows the token
    types; this module owns positions, attention and the KV cache.
    """

    causal: torch.Tensor  # buffers, registered in __init__
    eye: torch.Tensor

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_emb = nn.Embedding(cfg.max_tokens, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        # The boolean causal pattern, sliced per call (not saved: it is not a weight).
        self.register_buffer(
            "causal", torch.tril(torch.ones(cfg.max_tokens, cfg.max_tokens, dtype=torch.bool)), persistent=False
        )
        self.register_buffer("eye", torch.eye(cfg.max_tokens, dtype=torch.bool), persistent=False)
        self.apply(self.init_weights)
        # GPT-2 scaling of residual projections keeps the residual stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(
        self, batch: int, capacity: int | None = None, device=None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for ``batch`` rows and ``capacity`` slots (default: ``max_tokens``)."""
        capacity = self.cfg.max_tokens if capacity is None else capacity
        if not 1 <= capacity <= self.cfg.max_tokens:
            raise ValueError(f"cache capacity must be in [1, {self.cfg.max_tokens}], got {capacity}")
        p = self.pos_emb.weight
        return KVCache(
            self.cfg.n_layer, batch, self.cfg.n_head, capacity, self.cfg.n_embd // self.cfg.n_head,
            device=device or p.device, dtype=dtype or p.dtype,
        )

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``x`` ``(B, T, n_embd)`` (embedded tokens, positions not yet added).

        ``valid`` ``(B, T)`` bool marks real tokens (False = left padding; pads get no position and
        no query attends to them). With a ``cache``, the tokens are appended after its ``length``
        filled slots and attend to everything cached. Returns the final-LayerNorm hidden states.
        """
        B, T, _ = x.shape
        past = 0 if cache is None else cache.length
        if past + T > (self.cfg.max_tokens if cache is None else cache.capacity):
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the "
                f"{'cache capacity' if cache is not None else 'max_tokens'} "
                f"({cache.capacity if cache is not None else self.cfg.max_tokens})"
            )
        if cache is None and valid is None:
            # Training fast path: positions 0..T-1 and the plain causal mask (is_causal=True is
            # exactly the explicit mask below here), with no host syncs for torch.compile.
            pos = torch.arange(T, device=x.device)[None]
            attn_mask = None
        else:
            if valid is None:
                valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
            start_pos = cache.next_pos if cache is not None else torch.zeros(B, dtype=torch.long, device=x.device)
            # Position of a real token = number of real tokens before it in its row (<= its slot
            # index < capacity <= max_tokens); left pads get position 0 (their output is unused).
            pos = (start_pos[:, None] + torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
            keys_valid = valid if cache is None else torch.cat([cache.valid[:, :past], valid], dim=1)
            # A left-padding query would otherwise see no key at all (a NaN row); let every
            # query see itself (a pad's output is never used).
            own = self.eye[past:past + T, :past + T][None]
            attn_mask = (self.causal[past:past + T, :past + T][None] & (keys_valid[:, None, :] | own))[:, None]
        x = self.drop(x + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, i)
        if cache is not None:
            assert valid is not None  # set above whenever there is a cache
            cache.valid[:, past:past + T] = valid
            cache.next_pos = start_pos + valid.long().sum(dim=1)
            cache.length = past + T
        return self.ln_f(x)

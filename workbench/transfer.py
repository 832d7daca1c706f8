"""Adding games to a trained model: partial checkpoint loading with an explicit report.

Fine-tuning (``workbench.finetune``) and online adaptation start a freshly built algo for the
new game(s) from some of a pretrained checkpoint's weights. This module is the one place that
copies them, and it says exactly what it did::

    algo = spec.build(model, games, settings, seed)          # fresh weights for the games
    report = load_partial(checkpoint, algo, games,
                          transfer=("encoder",),              # copied from the checkpoint
                          reinitialize=("trunk", "heads"))    # kept at their fresh initialization
    report.frozen = freeze(algo, ("encoder",))               # encoder = frozen (after enter_stage)
    report.as_dict()  # {"transferred": [...], "reinitialized": [...], "new": [...], "dropped": [...], ...}

Scaled QL's offline protocol (``games`` = the source games + the held-out game) transfers
``("encoder", "heads")`` and re-initializes ``("trunk",)``: the old games' heads are carried over
bit-identically and the held-out game's head is new (a game the checkpoint knows but that is to
be learned anew, e.g. a new mode, goes in ``fresh_games``). JOWA transfers every part; only the
new game's task-embedding rows are new.

**Parts.** An algo that can be partially loaded (:class:`Transferable`) names its model's
parts: ``weight_parts()`` maps a part name (``encoder``, ``trunk``, ``heads`` for Scaled QL;
``tokenizer``, ``backbone``, ``task_embeddings``, ``world_heads``, ``q_head`` for JOWA) to the
``state_dict`` name prefixes it owns. Every tensor belongs to exactly one part, and the caller
puts every part in exactly one of ``transfer`` and ``reinitialize``: nothing is left to a default.

**Per-game tensors.** Some tensors hold one block of rows per game along dim 0 (Scaled QL's
joint head matrix: ``|A_g| x atoms`` rows per game; JOWA's two task-embedding tables: one row
per game). ``game_rows(games)`` gives each such tensor's rows per game, so the source layout
follows from the source run's games and the destination's from the new games. For a per-game
tensor of a transferred part, the blocks of games the checkpoint has are copied (game by game,
whatever the order), and the blocks of games it lacks keep their fresh initialization: they are
``new``. In a re-initialized part every block keeps its fresh weights (``reinitialized`` for
games the checkpoint has, ``new`` for the others). Report entries of per-game blocks read
``name[Game]``.

**Refusals.** Loading stops, before any weight changes, when a transferred tensor is missing
from the checkpoint, has another shape or dtype (a different preset, atom count or action
set), is not finite, or when a part is unknown or unassigned. Checkpoint tensors nothing uses
(a re-initialized part's, the dropped games' blocks, the target network's) are listed as
``dropped``. The target network (Scaled QL) or target Q head (JOWA) is then refreshed from the
online weights (``update_target``), so it starts equal to the network being fine-tuned.

Actions masks need no tensor: a game's valid actions come from its name (Scaled QL's head
index table, JOWA's ``ActionSpace``), so building the algo for the new games adds them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from workbench import checkpoint as ckpt_io
from workbench.run import Run

__all__ = ["TransferError", "TransferReport", "Transferable", "check_parts", "encoder_digest", "freeze",
           "fresh_report", "load_partial", "part_names", "part_tensors", "source_checkpoint"]


class TransferError(ValueError):
    """A checkpoint that does not fit what is asked to be transferred (the message names the tensor)."""


@runtime_checkable
class Transferable(Protocol):
    """An algo whose model can be partially loaded from another run's checkpoint."""

    @property
    def model(self) -> nn.Module: ...

    def update_target(self) -> None: ...

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        """Part name -> ``model.state_dict()`` name prefixes of that part (every tensor in one part)."""
        ...

    def game_rows(self, games: Sequence[str] | Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Per-game tensors: name -> rows (dim 0) of each game of ``games``, in that order."""
        ...


@dataclass
class TransferReport:
    """What a partial load did, tensor by tensor (per-game blocks as ``name[Game]``)."""

    source: str | None
    """The checkpoint folder weights came from (None: nothing was loaded, e.g. ``scratch``)."""
    source_games: list[str]
    """The source run's games, in its order."""
    games: list[str]
    """The destination's games, in its order."""
    parts: dict[str, str]
    """Part name -> 'transferred' | 'reinitialized'."""
    transferred: list[str] = field(default_factory=list)
    """Tensors (or per-game blocks) copied from the checkpoint."""
    reinitialized: list[str] = field(default_factory=list)
    """Tensors the checkpoint has, kept at their fresh initialization on purpose."""
    new: list[str] = field(default_factory=list)
    """Tensors (or per-game blocks) the checkpoint has no counterpart for: the new games'."""
    dropped: list[str] = field(default_factory=list)
    """Checkpoint tensors (or blocks) nothing was loaded from."""
    frozen: list[str] = field(default_factory=list)
    """Parameters excluded from training afterwards (``freeze``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: lists and their counts (what a finetune run records in ``config.json``)."""
        out = asdict(self)
        out["counts"] = {k: len(out[k]) for k in ("transferred", "reinitialized", "new", "dropped", "frozen")}
        return out

    def summary(self) -> str:
        """One line per category, for notebooks and the command line."""
        lines = [f"source: {self.source or '(none: random initialization)'}",
                 f"games: {self.source_games} -> {self.games}"]
        lines += [f"part {p}: {how}" for p, how in self.parts.items()]
        for key in ("transferred", "reinitialized", "new", "dropped", "frozen"):
            names: list[str] = getattr(self, key)
            shown = ", ".join(names[:6]) + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")
            lines.append(f"{key} ({len(names)}): {shown}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------- parts


def _as_transferable(algo: Any) -> Transferable:
    missing = [m for m in ("model", "update_target", "weight_parts", "game_rows") if not hasattr(algo, m)]
    if missing:
        raise TypeError(f"{type(algo).__name__} cannot be partially loaded: it lacks {', '.join(missing)} "
                        "(workbench.transfer.Transferable)")
    return algo


def part_names(algo: Any) -> tuple[str, ...]:
    """The algo's weight parts, in its own order (a TypeError when it cannot be partially loaded)."""
    return tuple(_as_transferable(algo).weight_parts())


def part_tensors(algo: Transferable) -> dict[str, list[str]]:
    """Part name -> the ``state_dict`` names it owns; every tensor in exactly one part."""
    parts = algo.weight_parts()
    names = list(algo.model.state_dict())
    out: dict[str, list[str]] = {p: [] for p in parts}
    orphans = []
    for name in names:
        owners = [p for p, prefixes in parts.items() if any(name.startswith(x) for x in prefixes)]
        if len(owners) != 1:
            orphans.append((name, owners))
            continue
        out[owners[0]].append(name)
    if orphans:
        shown = "; ".join(f"{n} in {o or 'no part'}" for n, o in orphans[:5])
        raise TypeError(f"{type(algo).__name__}.weight_parts() must put every tensor in exactly one part: {shown}")
    return out


def check_parts(algo: Transferable, transfer: Sequence[str], reinitialize: Sequence[str]) -> dict[str, str]:
    """Part -> 'transferred' | 'reinitialized', once every part is assigned exactly once."""
    valid = list(algo.weight_parts())
    unknown = [p for p in (*transfer, *reinitialize) if p not in valid]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; the parts of {type(algo).__name__} are {valid}")
    both = sorted(set(transfer) & set(reinitialize))
    if both:
        raise ValueError(f"parts {both} are both transferred and re-initialized; give each part once")
    unassigned = [p for p in valid if p not in transfer and p not in reinitialize]
    if unassigned:
        raise ValueError(f"parts {unassigned} are neither transferred nor re-initialized; every part of "
                         f"{type(algo).__name__} ({valid}) must be given in exactly one of them")
    return {p: "transferred" if p in transfer else "reinitialized" for p in valid}


def _blocks(rows: Sequence[int], games: Sequence[Any]) -> dict[Any, slice]:
    out, start = {}, 0
    for g, n in zip(games, rows):
        out[g] = slice(start, start + int(n))
        start += int(n)
    return out


# ------------------------------------------------------------------------------- loading


def source_checkpoint(source: str | os.PathLike[str]) -> tuple[Path, tuple[str, ...], dict[str, Any]]:
    """(checkpoint folder, the source run's games, its ``resolved`` config) of a run or checkpoint."""
    ckpt = ckpt_io.resolve_checkpoint(source)
    run = Run.open(ckpt)
    return ckpt, run.games, run.resolved


def _read_weights(ckpt: Path) -> dict[str, Tensor]:
    """The checkpoint's online-model tensors, its files verified against their sha256 first."""
    state = ckpt_io.read_state(ckpt)
    ckpt_io.verify_files(ckpt, state)

    try:
        tensors = load_file(str(ckpt / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ckpt_io.CheckpointError(f"{ckpt / 'model.safetensors'} is not a readable safetensors file ({exc})") \
            from None
    return tensors


def fresh_report(algo: Any, games: Sequence[str]) -> TransferReport:
    """The report of a model that loads nothing (``scratch``, ``bc``): every tensor is new."""
    names = list(algo.model.state_dict())
    return TransferReport(source=None, source_games=[], games=[str(g) for g in games], parts={}, new=names)


def load_partial(
    source: str | os.PathLike[str], algo: Any, games: Sequence[str] | Sequence[int], *,
    transfer: Sequence[str], reinitialize: Sequence[str] = (),
    source_games: Sequence[str] | Sequence[int] | None = None, fresh_games: Sequence[str] | Sequence[int] = (),
) -> TransferReport:
    """Copy the ``transfer`` parts of a checkpoint into ``algo`` (built for ``games``) in place.

    ``source``: a run folder, its ``checkpoints/`` folder or one checkpoint (verified: sha256,
    finiteness). ``source_games``: the checkpoint's games in their order (default: its run's
    ``config.json``). Per-game blocks are matched by game name; the blocks of ``fresh_games``
    keep their fresh initialization even in a transferred part (a game the checkpoint knows
    that is to be learned anew, e.g. a new mode of a training game). Every check runs before the
    first weight is written; afterwards the target network is refreshed from the online one.
    Returns the :class:`TransferReport`.
    """
    t_algo = _as_transferable(algo)
    parts = check_parts(t_algo, transfer, reinitialize)
    ckpt = ckpt_io.resolve_checkpoint(source)
    if source_games is None:
        _, run_games, _ = source_checkpoint(ckpt)
        source_games = run_games
    src_games: list[Any] = list(source_games)
    dst_games: list[Any] = list(games)
    fresh = set(fresh_games)
    if fresh - set(dst_games):
        raise ValueError(f"fresh_games {sorted(map(str, fresh - set(dst_games)))} are not among the model's games "
                         f"{dst_games}")
    if not src_games:
        raise TransferError(f"the source run of {ckpt} names no games; pass source_games")
    weights, _target = ckpt_io.split_model_state(_read_weights(ckpt))
    dest = t_algo.model.state_dict()
    owner = {n: p for p, names in part_tensors(t_algo).items() for n in names}
    dst_rows, src_rows = t_algo.game_rows(dst_games), t_algo.game_rows(src_games)

    report = TransferReport(source=str(ckpt), source_games=[str(g) for g in src_games],
                            games=[str(g) for g in dst_games], parts=parts)
    copies: list[tuple[Tensor, Tensor]] = []  # (destination view, source value): written after every check
    used: set[str] = set()
    for name, value in dest.items():
        how = parts[owner[name]]
        if name not in weights:
            if how == "transferred":
                raise TransferError(f"{ckpt / 'model.safetensors'} has no tensor {name!r} (part {owner[name]!r}, "
                                    "to be transferred): a different model or algorithm?")
            report.new.append(name)
            continue
        src = weights[name]
        used.add(name)
        if src.dtype != value.dtype:
            raise TransferError(f"{ckpt / 'model.safetensors'}: tensor {name!r} is {src.dtype} but the model "
                                f"needs {value.dtype}")
        if name not in dst_rows:
            if tuple(src.shape) != tuple(value.shape):
                if how == "transferred":
                    raise TransferError(
                        f"{ckpt / 'model.safetensors'}: tensor {name!r} (part {owner[name]!r}) is "
                        f"{tuple(src.shape)} but the model needs {tuple(value.shape)}: a different preset or "
                        "settings; refusing to transfer it")
                report.reinitialized.append(name)  # re-initialized anyway: its old shape does not matter
                continue
            if how == "transferred":
                copies.append((value, src))
                report.transferred.append(name)
            else:
                report.reinitialized.append(name)
            continue
        # A per-game tensor: blocks of rows matched by game name.
        s_blocks, d_blocks = _blocks(src_rows[name], src_games), _blocks(dst_rows[name], dst_games)
        expected = sum(src_rows[name])
        if src.shape[0] != expected or tuple(src.shape[1:]) != tuple(value.shape[1:]):
            raise TransferError(
                f"{ckpt / 'model.safetensors'}: per-game tensor {name!r} is {tuple(src.shape)}, but the source "
                f"games {src_games} need {expected} rows x {tuple(value.shape[1:])}: a different preset, atom "
                "count or game list")
        for g, d in d_blocks.items():
            label = f"{name}[{g}]"
            if g not in s_blocks:
                report.new.append(label)
                continue
            s = s_blocks[g]
            if s.stop - s.start != d.stop - d.start:
                raise TransferError(f"{ckpt / 'model.safetensors'}: {label} has {s.stop - s.start} rows in the "
                                    f"checkpoint but {d.stop - d.start} in the model (another action set?)")
            if how == "transferred" and g not in fresh:
                copies.append((value[d], src[s]))
                report.transferred.append(label)
            else:
                report.reinitialized.append(label)
        report.dropped += [f"{name}[{g}]" for g in s_blocks if g not in d_blocks]
    report.dropped += sorted(n for n in weights if n not in used)
    if _target:
        report.dropped.append("target.* (the target network is refreshed from the online weights)")
    for _view, src in copies:
        if src.is_floating_point() and not bool(torch.isfinite(src).all()):
            raise TransferError(f"{ckpt / 'model.safetensors'} holds NaN or Inf values in a tensor to transfer; "
                                "refusing non-finite weights")
    with torch.no_grad():
        for view, src in copies:
            view.copy_(src.to(view.device))
    t_algo.update_target()
    return report


# ------------------------------------------------------------------------------- freezing


def freeze(algo: Any, parts: Sequence[str]) -> list[str]:
    """Exclude the parameters of ``parts`` from training (``requires_grad = False``); returns
    their names. The trainer's optimizer only takes parameters that require gradients, so a
    frozen part stays bit-identical. Call it after ``spec.enter_stage`` (a stage may set
    ``requires_grad`` itself)."""
    t_algo = _as_transferable(algo)
    valid = list(t_algo.weight_parts())
    unknown = [p for p in parts if p not in valid]
    if unknown:
        raise ValueError(f"unknown parts {unknown} to freeze; the parts of {type(algo).__name__} are {valid}")
    owned = part_tensors(t_algo)
    chosen = {n for p in parts for n in owned[p]}
    frozen = []
    for name, param in t_algo.model.named_parameters():
        if name in chosen:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def encoder_digest(model: nn.Module, prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Copies of the tensors under ``prefixes`` (on CPU), e.g. to compare before and after training."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()
            if any(k.startswith(p) for p in prefixes)}

"""Other public Atari offline datasets, read as episodes and converted to the DQN-Replay layout.

A :class:`Source` lists its games and yields each game's :class:`Episode` s in its own order; the
converter (:mod:`workbench.data.sources.convert`, ``python -m workbench.data.sources convert``)
writes them as one DQN-Replay run (``{ROOT}/{Game}/1/replay_logs/``) that
:func:`workbench.data.build.build_store` and every split read unchanged. What a source cannot
provide (checkpoint ids, sticky actions, pooled frames, ...) it says in :meth:`Source.limits`; the
converter records that, the preprocessing and each episode's provenance in
``{ROOT}/source_info.json``.

Sources: ``minari`` (:mod:`workbench.data.sources.minari_source`, a local Minari dataset folder in
its HDF5 format; extra ``pip install -e ".[minari]"``) and ``rlu`` (:mod:`workbench.data.sources.rlu_source`,
RL Unplugged Atari: its own TFRecord episode files or a TFDS-prepared copy; read without TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from workbench.games import canonical_game

__all__ = ["Episode", "NoSourceData", "Source", "SourceError", "of_game"]


class SourceError(ValueError):
    """A source folder or dataset that cannot be read or converted (the message says why and what to do)."""


class NoSourceData(SourceError):
    """The folder holds nothing of this source's kind (as opposed to a copy of it that is broken)."""


@dataclass(eq=False)
class Episode:
    """One episode of a source, step ``t`` being (observation, action, reward, flags).

    ``observation`` of step ``t`` is the frame the action was taken at (the observation after the
    last step is not part of it: DQN-Replay never stores it). Frames are uint8, any size, RGB
    ``(H, W, 3)`` or grayscale ``(H, W)`` / ``(H, W, 1)``; they are loaded on demand through
    ``frames(start, stop)`` (steps ``[start, stop)``), so a long episode never has to sit in memory.
    ``action``: index into the game's *minimal* action set (the source maps its own actions).
    ``reward``: the raw (unclipped) reward. ``terminated``/``truncated``: per step, as gymnasium
    reports them; only the last step may carry one. ``provenance``: JSON-serializable facts about
    where the episode came from (dataset, episode id, seed, ...). ``run`` / ``checkpoint``: see below.
    """

    action: np.ndarray  # (T,) int64
    reward: np.ndarray  # (T,) float64
    terminated: np.ndarray  # (T,) bool
    truncated: np.ndarray  # (T,) bool
    frames: Callable[[int, int], np.ndarray] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the run and checkpoint of the policy that played it, where the source records them (RL
    #: Unplugged); None where it does not (Minari): the converter then writes run 1 and slices
    #: checkpoints by rows
    run: str | None = None
    checkpoint: int | None = None

    def __len__(self) -> int:
        return len(self.action)

    @property
    def observation(self) -> np.ndarray:
        """Every step's frame, ``(T, H, W[, C])`` (loads them all: prefer ``frames(start, stop)``)."""
        return self.frames(0, len(self))

    @property
    def ended_by_game_over(self) -> bool:
        """True when the last step ended the game (``terminated``), False for a time limit or a cut."""
        return bool(len(self) and self.terminated[-1])

    def check(self, where: str) -> None:
        """Raise :class:`SourceError` (naming ``where``) unless the arrays have one length and flags
        appear on the last step only."""
        n = len(self.action)
        for name in ("reward", "terminated", "truncated"):
            if len(getattr(self, name)) != n:
                raise SourceError(f"{where}: {name} has {len(getattr(self, name))} steps, action has {n}")
        if n == 0:
            raise SourceError(f"{where}: episode has no steps")
        early = np.flatnonzero(np.asarray(self.terminated[:-1]) | np.asarray(self.truncated[:-1]))
        if len(early):
            raise SourceError(f"{where}: terminated/truncated at step {int(early[0])} of {n}: only the last step of an "
                              "episode may end it")
        if not np.all(np.isfinite(self.reward)):
            raise SourceError(f"{where}: non-finite reward at step {int(np.flatnonzero(~np.isfinite(self.reward))[0])}")


@runtime_checkable
class Source(Protocol):
    """What the converter needs from a dataset of Atari episodes."""

    #: short name on the command line (``minari``)
    kind: str

    def games(self) -> list[str]:
        """Canonical game names (``workbench.games``) the source holds, sorted."""
        ...

    def episodes(self, game: str) -> Iterator[Episode]:
        """The game's episodes in the source's order (the order they were recorded in, where known)."""
        ...

    def limits(self) -> dict[str, str]:
        """What this source cannot provide that DQN-Replay has, key -> explanation (e.g.
        ``checkpoint_ids``, ``sticky_actions``, ``frame_pooling``)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """JSON-serializable description of the source (path, datasets and their metadata,
        checksums): recorded by the converter, and compared on a rerun to resume only the same source."""
        ...


_Item = TypeVar("_Item")


def of_game(items: list[_Item], game: str, where: str) -> list[_Item]:
    """The ``items`` (each with a ``.game``, a canonical name) of ``game``, spelled any way
    :func:`workbench.games.canonical_game` accepts; none is an error naming ``where`` and the
    games there are."""
    try:
        g = canonical_game(game)
    except ValueError:
        g = game
    chosen = [it for it in items if it.game == g]  # type: ignore[attr-defined]
    if not chosen:
        games = sorted({it.game for it in items})  # type: ignore[attr-defined]
        raise SourceError(f"game {game!r} is not in {where}; games: {games}")
    return chosen

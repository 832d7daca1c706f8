"""Game registry: canonical names, the game sets of both papers, minimal action sets.

Canonical names are DQN-Replay's CamelCase (``MsPacman``). :func:`canonical_game` also accepts
ALE snake_case (``ms_pacman``) and any casing (``mspacman``). Actions everywhere in the workbench
are indices into a game's *minimal* action set; :func:`minimal_action_set` maps them to ALE action
ids. The table below is hard-coded (in ale-py's ``getMinimalActionSet()`` order, ale-py 0.12) so that
importing this module never loads a ROM; ``tests/test_games.py`` checks it against ale-py.

Notes on the papers' game lists:

- ``scaled_ql_ablation_6``: Scaled QL Section 5.3 announces "a multi-game setting with only 6 games"
  but names only five (ASTERIX, BREAKOUT, PONG, SPACEINVADERS, SEAQUEST). We do not guess the sixth:
  the set holds the five named games.
- JOWA Table 6 lists 18 actions for Atlantis; its minimal action set in ALE (and in DQN-Replay, which
  stores minimal-set indices) has 4. Every other game in Table 6 agrees with this table.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

from workbench import geometry

__all__ = [
    "MAX_ACTIONS",
    "MINATAR_GAMES",
    "SUITES",
    "suite_of",
    "geometry_of",
    "minatar_env_name",
    "ACTION_NAMES",
    "DQN_REPLAY_GAMES",
    "GAME_SETS",
    "canonical_game",
    "ale_rom_id",
    "minimal_action_set",
    "num_actions",
    "action_names",
    "valid_action_mask",
    "resolve_games",
]

#: Size of ALE's full action set; models output this many action slots per sample.
MAX_ACTIONS = geometry.MAX_ACTIONS

#: Names of ALE's 18 actions, indexed by ALE action id (``ale_py.Action``).
ACTION_NAMES: tuple[str, ...] = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
)  # fmt: skip

_FULL = tuple(range(18))

# Minimal action sets (ALE action ids, in ale-py's order) of the 60 DQN-Replay games.
_MINIMAL_ACTIONS: dict[str, tuple[int, ...]] = {
    "AirRaid": (0, 1, 3, 4, 11, 12),
    "Alien": _FULL,
    "Amidar": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Assault": (0, 1, 2, 3, 4, 11, 12),
    "Asterix": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "Asteroids": (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15),
    "Atlantis": (0, 1, 11, 12),
    "BankHeist": _FULL,
    "BattleZone": _FULL,
    "BeamRider": (0, 1, 2, 3, 4, 6, 7, 11, 12),
    "Berzerk": _FULL,
    "Bowling": (0, 1, 2, 5, 10, 13),
    "Boxing": _FULL,
    "Breakout": (0, 1, 3, 4),
    "Carnival": (0, 1, 3, 4, 11, 12),
    "Centipede": _FULL,
    "ChopperCommand": _FULL,
    "CrazyClimber": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "DemonAttack": (0, 1, 3, 4, 11, 12),
    "DoubleDunk": _FULL,
    "ElevatorAction": _FULL,
    "Enduro": (0, 1, 3, 4, 5, 8, 9, 11, 12),
    "FishingDerby": _FULL,
    "Freeway": (0, 2, 5),
    "Frostbite": _FULL,
    "Gopher": (0, 1, 2, 3, 4, 10, 11, 12),
    "Gravitar": _FULL,
    "Hero": _FULL,
    "IceHockey": _FULL,
    "Jamesbond": _FULL,
    "JourneyEscape": (0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "Kangaroo": _FULL,
    "Krull": _FULL,
    "KungFuMaster": (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "MontezumaRevenge": _FULL,
    "MsPacman": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "NameThisGame": (0, 1, 3, 4, 11, 12),
    "Phoenix": (0, 1, 3, 4, 5, 11, 12, 13),
    "Pitfall": _FULL,
    "Pong": (0, 1, 3, 4, 11, 12),
    "Pooyan": (0, 1, 2, 5, 10, 13),
    "PrivateEye": _FULL,
    "Qbert": (0, 1, 2, 3, 4, 5),
    "Riverraid": _FULL,
    "RoadRunner": _FULL,
    "Robotank": _FULL,
    "Seaquest": _FULL,
    "Skiing": (0, 3, 4),
    "Solaris": _FULL,
    "SpaceInvaders": (0, 1, 3, 4, 11, 12),
    "StarGunner": _FULL,
    "Tennis": _FULL,
    "TimePilot": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Tutankham": (0, 2, 3, 4, 5, 10, 11, 12),
    "UpNDown": (0, 1, 2, 5, 10, 13),
    "Venture": _FULL,
    "VideoPinball": (0, 1, 2, 3, 4, 5, 10, 11, 12),
    "WizardOfWor": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "YarsRevenge": _FULL,
    "Zaxxon": _FULL,
}

#: The 60 games of DQN-Replay (Agarwal et al. 2020), alphabetical, CamelCase.
DQN_REPLAY_GAMES: tuple[str, ...] = tuple(sorted(_MINIMAL_ACTIONS))

# MinAtar (Young & Tian 2019, ``minatar`` 1.0.15): each game's minimal action set, in MinAtar's
# order, written as the ALE ids of the same moves (MinAtar's full set n, l, u, r, d, f is ALE's
# NOOP, LEFT, UP, RIGHT, DOWN, FIRE), so action names, masks and MGDT's action tokens need no
# second table. tests/test_minatar.py checks these against the package.
MINATAR_ALE_IDS = (0, 4, 2, 3, 5, 1)  # MinAtar full-set index -> ALE action id
_MINATAR_ACTIONS: dict[str, tuple[int, ...]] = {
    "MinAtar-Asterix": (0, 4, 2, 3, 5),
    "MinAtar-Breakout": (0, 4, 3),
    "MinAtar-Freeway": (0, 2, 5),
    "MinAtar-Seaquest": (0, 4, 2, 3, 5, 1),
    "MinAtar-SpaceInvaders": (0, 4, 3, 1),
}
MINATAR_GAMES: tuple[str, ...] = tuple(_MINATAR_ACTIONS)
_MINIMAL_ACTIONS.update(_MINATAR_ACTIONS)

#: Suite of every known game: the game names select the suite, its geometry and its envs.
SUITES: dict[str, str] = {**{g: "atari" for g in DQN_REPLAY_GAMES}, **{g: "minatar" for g in MINATAR_GAMES}}

GAME_SETS: dict[str, tuple[str, ...]] = {
    # Scaled QL Tables C.1/C.2: the 40 training games.
    "scaled_ql_40": (
        "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider",
        "Boxing", "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber",
        "DemonAttack", "DoubleDunk", "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher",
        "Gravitar", "Hero", "IceHockey", "Jamesbond", "Kangaroo", "Krull", "KungFuMaster",
        "NameThisGame", "Phoenix", "Pooyan", "Qbert", "Riverraid", "Robotank", "Seaquest",
        "TimePilot", "UpNDown", "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
    ),
    # Scaled QL Section 5.2, offline fine-tuning games (from Lee et al. 2022).
    "scaled_ql_heldout": ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner"),
    # Scaled QL Section 5.3: announced as 6 games, only these 5 are named (see module docstring).
    "scaled_ql_ablation_6": ("Asterix", "Breakout", "Pong", "SpaceInvaders", "Seaquest"),
    # Scaled QL Section 5.2, online fine-tuning variants (game, mode): see envs.PAPER_VARIANTS.
    "scaled_ql_variants": ("Breakout", "Hero", "Freeway"),
    # JOWA Appendix D, in the order of Table 2.
    "jowa_15": (
        "Assault", "Atlantis", "BeamRider", "Berzerk", "Carnival", "Centipede", "ChopperCommand",
        "DemonAttack", "NameThisGame", "Phoenix", "Seaquest", "SpaceInvaders", "StarGunner",
        "TimePilot", "Zaxxon",
    ),
    "jowa_heldout": ("Pong", "Robotank", "YarsRevenge", "Gravitar", "MsPacman"),
    # JOWA Section 5.5.
    "jowa_ablation_6": (
        "Assault", "Carnival", "Centipede", "NameThisGame", "Phoenix", "SpaceInvaders",
    ),
    "dqn_replay_60": DQN_REPLAY_GAMES,
    # MinAtar's five games (the CPU-scale suite).
    "minatar_5": MINATAR_GAMES,
}  # fmt: skip


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: dict[str, str] = {_key(g): g for g in SUITES}


def canonical_game(name: str) -> str:
    """Return the canonical CamelCase name of a DQN-Replay or MinAtar game.

    Accepts ``MsPacman``, ``ms_pacman``, ``mspacman``, ``MS-PACMAN`` (case, ``_``, ``-`` and spaces
    are ignored), and ``minatar_breakout`` for ``MinAtar-Breakout``. Raises ValueError with close
    matches for an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(f"game name must be a str, got {type(name).__name__}: {name!r}")
    game = _BY_KEY.get(_key(name))
    if game is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=5, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(_BY_KEY[c] for c in close)}?"
            if close
            else f"known games: {', '.join(SUITES)}"
        )
        raise ValueError(f"unknown game {name!r}: {hint}")
    return game


def suite_of(game: str) -> str:
    """``"atari"`` or ``"minatar"``: the suite a game belongs to."""
    return SUITES[canonical_game(game)]


def geometry_of(games: str | Sequence[str]) -> geometry.FrameGeometry:
    """The frame geometry of one game, or of a list of games (which must share a suite)."""
    names = [games] if isinstance(games, str) else list(games)
    suites = sorted({suite_of(g) for g in names})
    if len(suites) != 1:
        raise ValueError(f"games {names} mix suites {suites}: a run, store or model holds one suite's frames")
    return geometry.GEOMETRIES[suites[0]]


def ale_rom_id(game: str) -> str:
    """ale-py ROM id (snake_case, e.g. ``ms_pacman``) of an Atari game."""
    name = canonical_game(game)
    if suite_of(name) != "atari":
        raise ValueError(f"{name} is a {suite_of(name)} game, not an Atari ROM")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def minatar_env_name(game: str) -> str:
    """The ``minatar`` package's env name (``space_invaders``) of a MinAtar game."""
    name = canonical_game(game)
    if suite_of(name) != "minatar":
        raise ValueError(f"{name} is not a MinAtar game; MinAtar games: {', '.join(MINATAR_GAMES)}")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("MinAtar-")).lower()


def minimal_action_set(game: str) -> tuple[int, ...]:
    """ALE action ids of the game's minimal action set; minimal index i -> ALE id ``[i]``."""
    return _MINIMAL_ACTIONS[canonical_game(game)]


def num_actions(game: str) -> int:
    """Size of the game's minimal action set."""
    return len(minimal_action_set(game))


def action_names(game: str) -> tuple[str, ...]:
    """Names ('NOOP', 'FIRE', ...) of the game's minimal actions, by minimal index."""
    return tuple(ACTION_NAMES[a] for a in minimal_action_set(game))


def valid_action_mask(games: Sequence[str]) -> np.ndarray:
    """Bool ``(G, MAX_ACTIONS)``: row g is True at minimal indices ``< num_actions(games[g])``."""
    if isinstance(games, str):
        games = [games]
    n = np.array([num_actions(g) for g in games], dtype=np.int64)
    return np.arange(MAX_ACTIONS)[None, :] < n[:, None]


def resolve_games(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical game tuple from a game-set name, a comma-separated string, or a list of names.

    Duplicates are an error (a run's ``game_id`` must identify one game).
    """
    if isinstance(spec, str):
        if spec.strip() in GAME_SETS:
            return GAME_SETS[spec.strip()]
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"empty game spec; game sets: {', '.join(GAME_SETS)}")
        if len(parts) == 1 and _key(parts[0]) not in _BY_KEY:
            close = difflib.get_close_matches(parts[0], list(GAME_SETS), n=3, cutoff=0.6)
            if close:
                raise ValueError(
                    f"unknown game or game set {parts[0]!r}: did you mean {', '.join(close)}? "
                    f"game sets: {', '.join(GAME_SETS)}"
                )
    elif isinstance(spec, Sequence):
        parts = list(spec)
        if not parts:
            raise ValueError("empty list of games")
    else:
        raise TypeError(
            f"games must be a game-set name, a comma-separated str or a list, got {type(spec).__name__}"
        )
    try:
        games = tuple(canonical_game(p) for p in parts)
    except ValueError as e:
        raise ValueError(f"{e} (game sets: {', '.join(GAME_SETS)})") from None
    dup = sorted({g for g in games if games.count(g) > 1})
    if dup:
        raise ValueError(f"duplicate games in {spec!r}: {', '.join(dup)}")
    geometry_of(games)  # one suite per run
    return games

"""Game registry checked against ale-py and the papers' game lists."""

from __future__ import annotations

import ale_py
import numpy as np
import pytest
from ale_py import roms

from workbench import games
from workbench.reference import paper_tables


@pytest.mark.slow
def test_minimal_action_sets_match_ale_for_every_registry_game():
    registry = set().union(*games.GAME_SETS.values()) - set(games.MINATAR_GAMES)
    assert registry == set(games.DQN_REPLAY_GAMES) and len(registry) == 60
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    for game in sorted(registry):
        rom = games.ale_rom_id(game)
        assert rom in roms.get_all_rom_ids(), game
        ale.loadROM(roms.get_rom_path(rom))
        ale_ids = tuple(a.value for a in ale.getMinimalActionSet())
        assert games.minimal_action_set(game) == ale_ids, game
        assert games.action_names(game) == tuple(a.name for a in ale.getMinimalActionSet())
        assert games.num_actions(game) == len(ale_ids)


def test_action_counts_match_jowa_table_6():
    table6 = {
        "Assault": 7, "Atlantis": 18, "BeamRider": 9, "Berzerk": 18, "Carnival": 6,
        "Centipede": 18, "ChopperCommand": 18, "DemonAttack": 6, "Gravitar": 18, "MsPacman": 9,
        "NameThisGame": 6, "Phoenix": 8, "Pong": 6, "Robotank": 18, "Seaquest": 18,
        "SpaceInvaders": 6, "StarGunner": 18, "TimePilot": 10, "YarsRevenge": 18, "Zaxxon": 18,
    }  # fmt: skip
    mismatch = {g: (n, games.num_actions(g)) for g, n in table6.items() if games.num_actions(g) != n}
    # Table 6 gives Atlantis the full 18 actions; its minimal set (checked above) has 4.
    assert mismatch == {"Atlantis": (18, 4)}


def test_game_sets_match_papers():
    sets = games.GAME_SETS
    assert set(sets["scaled_ql_40"]) == set(paper_tables.SCALED_QL_C1["Human"]) == set(
        paper_tables.SCALED_QL_C2["Human"]
    )
    assert len(sets["scaled_ql_40"]) == 40
    assert set(sets["jowa_15"]) == set(paper_tables.JOWA_T2["Human"]) and len(sets["jowa_15"]) == 15
    assert set(sets["jowa_heldout"]) == set(paper_tables.JOWA_T17["DQN"])
    assert set(sets["jowa_ablation_6"]) == set(paper_tables.JOWA_T18["Origin"])
    assert sets["scaled_ql_heldout"] == ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner")
    assert len(sets["scaled_ql_ablation_6"]) == 5  # the paper names only 5 of its "6 games"
    assert not set(sets["jowa_15"]) & set(sets["jowa_heldout"])
    assert not set(sets["scaled_ql_40"]) & set(sets["scaled_ql_heldout"])


@pytest.mark.parametrize("name", ["MsPacman", "ms_pacman", "mspacman", "MSPACMAN", "Ms-Pacman"])
def test_canonical_names(name):
    assert games.canonical_game(name) == "MsPacman"


def test_round_trip_and_errors():
    for g in games.DQN_REPLAY_GAMES:
        assert games.canonical_game(games.ale_rom_id(g)) == g
    with pytest.raises(ValueError, match="did you mean MsPacman"):
        games.canonical_game("ms_packman")
    with pytest.raises(ValueError, match="did you mean jowa_15"):
        games.resolve_games("jowa15")
    with pytest.raises(ValueError, match="duplicate"):
        games.resolve_games("pong,Pong")
    with pytest.raises(ValueError, match="did you mean"):
        games.resolve_games(["Pong", "Breakot"])
    with pytest.raises(TypeError):
        games.resolve_games(3)  # type: ignore[arg-type]


def test_resolve_games_and_mask():
    assert games.resolve_games("jowa_heldout") == games.GAME_SETS["jowa_heldout"]
    assert games.resolve_games("pong, space_invaders") == ("Pong", "SpaceInvaders")
    assert games.resolve_games(["breakout"]) == ("Breakout",)
    mask = games.valid_action_mask(["Breakout", "Alien", "Freeway"])
    assert mask.shape == (3, games.MAX_ACTIONS) and mask.dtype == np.bool_
    for row, n in zip(mask, [4, 18, 3]):
        assert row.sum() == n and row[:n].all()

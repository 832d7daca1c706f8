"""JOWA's action space: the 18 ALE actions shared by all games (paper 003, Sec. 4.1), with a
per-game mask; minimal-set indices only at the data and environment boundary.

The expected indices below are written out by hand from ALE's action ids (NOOP 0, FIRE 1, UP 2,
RIGHT 3, LEFT 4, DOWN 5, ...) and each game's minimal set (``tests/test_games.py`` checks the
workbench's table against ale-py), not taken from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import games
from workbench.algos.jowa import JOWA, PlannerInspector
from workbench.models.tokenizer import Tokenizer
from workbench.models.world_action import ActionSpace, WorldActionModel, world_action_config
from workbench.planner import PlannerPolicy
from workbench.viz.rollout import inspect_policy_step

UP, DOWN, FIRE = 2, 5, 1  # ALE ids
# Four games in which UP and DOWN sit at different minimal indices:
#   Freeway (NOOP, UP, DOWN); MsPacman (NOOP, UP, RIGHT, LEFT, DOWN, ...);
#   Qbert (NOOP, FIRE, UP, RIGHT, LEFT, DOWN); Bowling (NOOP, FIRE, UP, DOWN, UPFIRE, DOWNFIRE).
GAMES = ("Freeway", "MsPacman", "Qbert", "Bowling")
UP_MIN = (1, 1, 2, 2)
DOWN_MIN = (2, 4, 5, 3)
ALE_SETS = ({0, 2, 5}, {0, 2, 3, 4, 5, 6, 7, 8, 9}, {0, 1, 2, 3, 4, 5}, {0, 1, 2, 5, 10, 13})


def _up_then_down_batch() -> dict[str, torch.Tensor]:
    """One 2-step segment per game: UP, then DOWN, as each game's minimal indices."""
    g = torch.Generator().manual_seed(0)
    B = len(GAMES)
    return {
        "tokens": torch.randint(0, 2048, (B, 2, 36), generator=g).to(torch.uint16),
        "action": torch.tensor([UP_MIN, DOWN_MIN]).T.contiguous(),
        "reward": torch.tensor([[1.0, 0.0]] * B),
        "terminal": torch.zeros(B, 2),
        "mask": torch.ones(B, 2, dtype=torch.bool),
        "game_id": torch.arange(B),
        "valid_mask": torch.from_numpy(games.valid_action_mask(list(GAMES))),  # minimal-set mask
    }


def test_same_button_has_the_same_embedding_row_in_every_game():
    """Mutation caught: JOWA embedding minimal-set indices (Freeway's DOWN = 2 would then be
    the row MsPacman's UP gets, and DOWN would be a different row in each game)."""
    algo = JOWA.build("jowa-tiny", GAMES, stage=2, seed=0)
    emb = algo.model.world.act_emb
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = emb.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].clone(), out.detach().clone())))
    try:
        algo.loss(_up_then_down_batch())
    finally:
        hook.remove()
    (ids, vectors), = seen  # one forward over the interleaved sequence
    action_pos = [36, 73]  # the action token of each step
    assert ids[:, action_pos].tolist() == [[UP, DOWN]] * len(GAMES)
    for b in range(len(GAMES)):
        torch.testing.assert_close(vectors[b, 36], emb.weight[UP].detach())
        torch.testing.assert_close(vectors[b, 73], emb.weight[DOWN].detach())


def test_stage2_loss_scores_ale_actions_under_the_games_ale_masks(monkeypatch):
    """The Q loss gets ALE ids and masks over the 18 ALE actions. Mutation caught: masks left as
    "slots < num_actions" (Freeway's DOWN, ALE 5, would be masked out and its TD/CQL terms
    would read a wrong slot)."""
    import workbench.algos.jowa as jowa_module

    real = jowa_module.action_losses
    got: dict[str, torch.Tensor] = {}

    def spy(model, out, actions, rewards, terminals, mask, valid_mask, **kw):
        got["actions"], got["valid"] = actions.clone(), valid_mask.clone()
        return real(model, out, actions, rewards, terminals, mask, valid_mask, **kw)

    monkeypatch.setattr(jowa_module, "action_losses", spy)
    algo = JOWA.build("jowa-tiny", GAMES, stage=2, seed=0)
    loss, metrics = algo.loss(_up_then_down_batch())
    assert torch.isfinite(loss) and torch.isfinite(metrics["loss/cql"])
    assert got["actions"].tolist() == [[UP, DOWN]] * len(GAMES)
    assert [set(torch.nonzero(row).flatten().tolist()) for row in got["valid"]] == list(ALE_SETS)


def test_action_space_tables_and_errors():
    space = ActionSpace(GAMES)
    assert [set(torch.nonzero(row).flatten().tolist()) for row in space.valid] == list(ALE_SETS)
    # slot order: the minimal set in minimal order, then the other ALE ids.
    assert space.slot_order[0].tolist() == [0, 2, 5, 1, 3, 4] + list(range(6, 18))
    back = space.to_minimal.gather(1, space.to_full.clamp(min=0))
    for g, n in enumerate(space.num_actions.tolist()):
        assert back[g, :n].tolist() == list(range(n))  # minimal -> ALE -> minimal is the identity
    with pytest.raises(ValueError, match=r"action 3 of game_id 0 is outside its minimal set 0\.\.2"):
        space.full(torch.tensor([3, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside its minimal set"):
        JOWA.build("jowa-tiny", GAMES, stage=2).loss({**_up_then_down_batch(), "action": torch.full((4, 2), 9)})


def _preferring_model() -> WorldActionModel:
    """A model whose Q depends only on the ALE action: DOWN (30) > UP (~22) > FIRE (~14) > the rest
    (-10); rewards are 0 and no step ends, so a search ranks paths by their first action's Q."""
    torch.manual_seed(0)
    m = WorldActionModel(world_action_config("jowa-tiny", num_games=len(GAMES) + 1)).eval()
    atoms = m.cfg.num_atoms
    bias = torch.zeros(18, atoms)
    bias[:, 0] = 50.0
    for a, atom in ((DOWN, 50), (UP, 40), (FIRE, 30)):
        bias[a] = 0.0
        bias[a, atom] = 50.0
    with torch.no_grad():
        last = m.q_head.heads[0][-1]
        last.weight.zero_()
        last.bias.copy_(bias.flatten())
        m.reward_head[-1].weight.zero_()
        m.reward_head[-1].bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
        m.term_head[-1].weight.zero_()
        m.term_head[-1].bias.copy_(torch.tensor([50.0, -50.0]))
    return m


@pytest.mark.parametrize("horizon,beam", [(0, 1), (1, 2)])
def test_planner_scores_ale_slots_and_answers_in_minimal_indices(horizon, beam):
    """Every game's DOWN wins (Breakout, without UP or DOWN: FIRE), returned as that game's own
    minimal index; trees, paths and root distributions are in minimal indices too, so the
    explorer names them right. Mutations caught: returning ALE ids, masking minimal slots,
    trees or distributions left in ALE order."""
    names = GAMES + ("Breakout",)
    model = _preferring_model()
    tok = Tokenizer(world_action_config("jowa-tiny").tokenizer).eval()
    policy = PlannerPolicy(model, tok, names, horizon=horizon, beam_width=beam, return_tree=True)
    obs = np.random.default_rng(0).integers(0, 256, (len(names), 4, 84, 84), dtype=np.uint8)
    gids = np.arange(len(names))
    actions = policy.act(obs, gids)
    assert actions.tolist() == list(DOWN_MIN) + [1]  # Breakout: NOOP, FIRE, RIGHT, LEFT
    probs = policy.last_root_probs
    for i, name in enumerate(names):
        n = games.num_actions(name)
        best = int(np.argmax(probs[i, :n] @ policy.support))
        assert games.action_names(name)[best] == ("FIRE" if name == "Breakout" else "DOWN")
        if name != "Breakout":
            assert probs[i, UP_MIN[i]].argmax() == 40  # UP's distribution at UP's minimal slot
        tree = policy.last_trees[i]
        assert games.action_names(name)[tree.chosen_action] == games.action_names(name)[actions[i]]
        if horizon == 1 and name != "Breakout":
            first = {games.action_names(name)[n.action] for n in tree.nodes if n.depth == 1}
            assert first == {"DOWN", "UP"}  # the two best buttons by Q, by their own names
            assert policy.last_path_actions[i, 0] == actions[i]
    # The explorer's view of one decision (what play_rollout records): names and Q slots agree.
    for i, name in enumerate(names[:2]):
        step = inspect_policy_step(PlannerInspector(policy), obs[i:i + 1], i, games.num_actions(name))
        assert games.action_names(name)[step.greedy_action] == "DOWN"
        assert step.q_probs is not None and len(step.q_probs) == games.num_actions(name)
        assert games.action_names(name)[int(np.argmax(step.q_probs @ step.support))] == "DOWN"

"""Beam-search planner against brute-force enumeration with full (uncached) forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.models.tokenizer import Tokenizer
from workbench.models.world_action import WorldActionModel, world_action_config
from workbench.planner import PlannerPolicy, SearchProfile, _prefix, _SharedContext, beam_search, beam_search_sequential

GAMMA = 0.9
N_ACT = torch.tensor([4, 6, 3])


@pytest.fixture(scope="module")
def model() -> WorldActionModel:
    torch.manual_seed(0)
    m = WorldActionModel(world_action_config("jowa-tiny", num_games=3)).eval()
    # Sharpen the heads so rewards, terminations and Q differ clearly between actions.
    with torch.no_grad():
        m.reward_head[-1].weight.mul_(30.0)
        m.q_head.heads[0][-1].weight.mul_(20.0)
    return m


def _inputs(N: int = 3, C: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 2048, (N, 36), generator=g)
    game = torch.arange(N) % 3
    vm = torch.arange(18)[None] < N_ACT[game][:, None]
    ct = torch.randint(0, 2048, (N, C, 36), generator=g)
    ca = torch.randint(0, 3, (N, C), generator=g)
    cv = torch.ones(N, C, dtype=torch.bool)
    if C:
        cv[0, 0] = False  # a short history, left-padded
    return obs, game, vm, ct, ca, cv


def _prefix_seq(ct, ca, cv, obs):
    """Real context steps then the current frame, as a flat token list with action flags."""
    toks, flags = [], []
    for t in range(ct.shape[0]):
        if cv[t]:
            toks += ct[t].tolist() + [int(ca[t])]
            flags += [False] * 36 + [True]
    return toks + obs.tolist(), flags + [False] * 36


def _full(model, toks, flags, game):
    """Hidden state of the last token from a full forward, no cache."""
    t = torch.tensor(toks)[None]
    f = torch.tensor(flags)[None]
    return model.forward_tokens(t, f, torch.tensor([game]))[:, -1]


def _q(model, h, valid):
    return model.q_values(model.q_head(h), valid[None])[0]


@torch.no_grad()
def _uncached_step(model, toks, flags, game, a, valid):
    """One imagined step, every token by a full forward: (reward, terminal, max Q at the new
    state, the sequence and flags extended by the action and the 36 greedily decoded tokens)."""
    seq, fl = toks + [a], flags + [True]
    h = _full(model, seq, fl, game)
    probs = torch.softmax(model.reward_head(h).float(), -1)[0]
    r = float(probs @ torch.tensor([-1.0, 0.0, 1.0]))
    term = float(torch.softmax(model.term_head(h).float(), -1)[0, 1]) > 0.5
    for _ in range(36):  # greedy decoding of the next frame, each token by a full forward
        seq, fl = seq + [int(model.obs_head(h).argmax(-1))], fl + [False]
        h = _full(model, seq, fl, game)
    return r, term, float(_q(model, h, valid).max()), seq, fl


@torch.no_grad()
def _brute_one_step(model, ct, ca, cv, obs, game, valid):
    """Enumerate every valid action: predicted reward + gamma * max Q (0 if predicted terminal)."""
    toks, flags = _prefix_seq(ct, ca, cv, obs)
    values = {}
    for a in range(int(valid.sum())):
        r, term, q, _, _ = _uncached_step(model, toks, flags, game, a, valid)
        values[a] = r if term else r + GAMMA * q
    return max(values, key=values.get), values


@torch.no_grad()
def _brute_two_steps(model, ct, ca, cv, obs, game, valid):
    """Every valid action sequence of length 2, by uncached forwards: {(a0, a1): (value, r1)} with
    value ``r0 + gamma r1 + gamma^2 max Q(s2)`` (no bootstrap after a predicted end), and
    {(a0,): (r0, 0.0)} for a first step predicted terminal (its episode ends: no a1)."""
    toks, flags = _prefix_seq(ct, ca, cv, obs)
    leaves = {}
    for a0 in range(int(valid.sum())):
        r0, term0, _, seq, fl = _uncached_step(model, toks, flags, game, a0, valid)
        if term0:
            leaves[(a0,)] = (r0, 0.0)
            continue
        for a1 in range(int(valid.sum())):
            r1, term1, q2, _, _ = _uncached_step(model, seq, fl, game, a1, valid)
            leaves[(a0, a1)] = (r0 + GAMMA * r1 + (0.0 if term1 else GAMMA ** 2 * q2), r1)
    return leaves


@torch.no_grad()
def test_h0_and_k1_are_greedy_in_q(model):
    obs, game, vm, ct, ca, cv = _inputs()
    greedy = []
    for i in range(3):
        toks, flags = _prefix_seq(ct[i], ca[i], cv[i], obs[i])
        greedy.append(int(_q(model, _full(model, toks, flags, int(game[i])), vm[i]).argmax()))
    for H, K in ((0, 3), (2, 1), (0, 1)):
        res = beam_search(model, obs, game, vm, H, K, GAMMA, ct, ca, cv)
        assert res.actions.tolist() == greedy


@torch.no_grad()
def test_full_width_one_step_equals_brute_force(model):
    obs, game, vm, ct, ca, cv = _inputs(seed=1)
    res = beam_search(model, obs, game, vm, 1, 18, GAMMA, ct, ca, cv, return_tree=True)
    for i in range(3):
        best, values = _brute_one_step(model, ct[i], ca[i], cv[i], obs[i], int(game[i]), vm[i])
        assert int(res.actions[i]) == best
        # The tree's depth-1 scores are the enumerated values, one node per valid action.
        children = {n.action: n.score for n in res.trees[i].nodes if n.depth == 1}
        assert set(children) == set(values)
        for a, v in values.items():
            assert children[a] == pytest.approx(v, abs=1e-4)
    # The brute force is not trivially greedy here (otherwise the test would prove little).
    assert res.actions.tolist() != beam_search(model, obs, game, vm, 0, 1, GAMMA, ct, ca, cv).actions.tolist()


@pytest.fixture(scope="module")
def two_step_leaves(model):
    """Inputs and the brute-force leaves of each of their 3 environments (computed once)."""
    inputs = _inputs(seed=8)
    obs, game, vm, ct, ca, cv = inputs
    return inputs, [_brute_two_steps(model, ct[i], ca[i], cv[i], obs[i], int(game[i]), vm[i]) for i in range(3)]


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_full_width_two_steps_equals_brute_force_enumeration(model, two_step_leaves, shared_prefix):
    """Catches: the planner dropping the discount on predicted rewards (scoring a depth-1 child
    ``r0 + r1 + ...`` instead of ``r0 + gamma r1 + ...``), and any other error in two-step scores.

    With K >= the number of valid actions and H = 2 the beam search is exhaustive, so every leaf
    of its tree must carry the value of an independent brute-force enumeration of all action
    sequences with uncached forwards, and the chosen action must start the best sequence. Run on
    both context layouts (shared prefix and per-row copies)."""
    (obs, game, vm, ct, ca, cv), all_leaves = two_step_leaves
    res = beam_search(model, obs, game, vm, 2, 18, GAMMA, ct, ca, cv, return_tree=True, shared_prefix=shared_prefix)
    undiscounted_differs = False
    for i, leaves in enumerate(all_leaves):
        nodes = res.trees[i].nodes
        got = {}
        for n in nodes:
            if n.depth == 2:
                got[(nodes[n.parent].action, n.action)] = n.score
            elif n.depth == 1 and n.terminal:
                got[(n.action,)] = n.score
        assert set(got) == set(leaves)
        for key, (value, _) in leaves.items():
            assert got[key] == pytest.approx(value, abs=1e-4), key
        best = max(leaves, key=lambda k: leaves[k][0])
        assert int(res.actions[i]) == best[0]
        # The test can see the mutation: some second-step reward moves a value by (1 - gamma) r1.
        undiscounted_differs |= any(abs((1 - GAMMA) * r1) > 1e-2 for _, r1 in leaves.values())
    assert undiscounted_differs


def _assert_same_search(a, b):
    """Same actions, paths and trees (every node field exact but the float ones, which may differ
    by fp32 rounding between the two attention layouts)."""
    assert a.actions.tolist() == b.actions.tolist()
    torch.testing.assert_close(a.root_q, b.root_q, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.path_actions, b.path_actions) and torch.equal(a.path_tokens, b.path_tokens)
    assert torch.equal(a.path_valid, b.path_valid)
    for ta, tb in zip(a.trees, b.trees, strict=True):
        assert ta.chosen_action == tb.chosen_action and len(ta.nodes) == len(tb.nodes)
        for na, nb in zip(ta.nodes, tb.nodes):
            assert (na.id, na.parent, na.depth, na.action, na.kept, na.terminal) == (
                nb.id, nb.parent, nb.depth, nb.action, nb.kept, nb.terminal)
            for f in ("reward", "q", "score"):
                assert getattr(na, f) == pytest.approx(getattr(nb, f), rel=1e-5, abs=1e-5), f


@torch.no_grad()
@pytest.mark.parametrize("terminations", [True, False])
def test_shared_prefix_equals_copied_context(model, terminations):
    """The shared context prefix (one per environment) gives the previous planner's search (a full
    copy of the context per beam and child): same actions, trees and imagined paths; 4 envs with
    per-env K (one K = 1), a left-padded context, H = 3 so rows carry two finished steps."""
    m = model if terminations else _no_termination(model)
    obs, game, vm, ct, ca, cv = _inputs(N=4, C=2, seed=9)
    K = torch.tensor([3, 2, 1, 3])
    shared = beam_search(m, obs, game, vm, 3, K, GAMMA, ct, ca, cv, return_tree=True)
    copied = beam_search(m, obs, game, vm, 3, K, GAMMA, ct, ca, cv, return_tree=True, shared_prefix=False)
    _assert_same_search(shared, copied)
    n_terminal = sum(n.terminal for t in shared.trees for n in t.nodes)
    assert (n_terminal > 0) == terminations  # both regimes are really exercised
    if not terminations:
        assert all(max(n.depth for n in t.nodes) == 3 for t, k in zip(shared.trees, K) if k > 1)


@torch.no_grad()
def test_shared_context_rows_equal_full_forwards(model):
    """Each row of the shared-prefix context (its environment's context + its beam's path + its
    own step) yields the hidden states of a full uncached forward over that row's whole sequence:
    two environments (one left-padded), 3 children per root, then 2 beams per environment kept
    (one of them twice) with 2 children each, then 1 child each."""
    obs, game, vm, ct, ca, cv = _inputs(N=2, C=2, seed=10)
    prefix, _ = _prefix(model, obs, game, ct, ca, cv)
    ctx = _SharedContext.start(model, prefix)
    seqs = []
    for i in range(2):
        toks, flags = _prefix_seq(ct[i], ca[i], cv[i], obs[i])
        seqs.append((toks, flags))
    g = torch.Generator().manual_seed(0)
    for k, keep in ((3, [2, 0, 4, 4]), (2, [3, 0, 5, 6]), (1, None)):
        ctx = ctx.children(k)
        seqs = [(list(t), list(f)) for t, f in seqs for _ in range(k)]
        M = len(seqs)
        rows_game = game.repeat_interleave(M // 2)
        feeds = [(torch.randint(0, 3, (M,), generator=g), True)]
        feeds += [(torch.randint(0, 2048, (M,), generator=g), False) for _ in range(3)]
        for tokens, is_action in feeds:
            h = ctx.forward(tokens, is_action, rows_game)
            for r in range(M):
                seqs[r][0].append(int(tokens[r]))
                seqs[r][1].append(is_action)
                want = _full(model, seqs[r][0], seqs[r][1], int(rows_game[r]))[0]
                torch.testing.assert_close(h[r], want, rtol=1e-4, atol=1e-5)
        if keep is not None:  # the kept rows become the next beams (a path of finished steps)
            ctx = ctx.select(torch.tensor(keep))
            seqs = [seqs[j] for j in keep]


def test_search_profile_accounts_for_the_whole_call(model):
    obs, game, vm, ct, ca, cv = _inputs(seed=11)
    profile = SearchProfile()
    with torch.no_grad():
        beam_search(model, obs, game, vm, 2, 2, GAMMA, ct, ca, cv, profile=profile)
        beam_search(model, obs, game, vm, 2, 2, GAMMA, ct, ca, cv, profile=profile)
    assert set(profile.seconds) == set(SearchProfile.PHASES)
    assert all(v > 0 for v in profile.seconds.values())
    assert sum(profile.seconds.values()) == pytest.approx(profile.total, rel=1e-6)
    assert sum(profile.shares().values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown search phase 'attention'; valid: prefix, action_token"):
        with profile.phase("attention"):
            pass


def test_beam_search_refuses_a_model_in_training_mode(model):
    obs, game, vm, ct, ca, cv = _inputs()
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            beam_search(model, obs, game, vm, 2, 2, GAMMA, ct, ca, cv)
    finally:
        model.eval()


@torch.no_grad()
def test_predicted_termination_stops_scoring():
    torch.manual_seed(1)
    m = WorldActionModel(world_action_config("jowa-tiny", num_games=3)).eval()
    with torch.no_grad():
        m.reward_head[-1].weight.mul_(30.0)
        m.term_head[-1].bias.copy_(torch.tensor([-20.0, 20.0]))  # every step ends the episode
        m.q_head.heads[0][-1].bias.view(18, 51)[:, -1] = 30.0  # huge Q: any bootstrap would dominate
    obs, game, vm, ct, ca, cv = _inputs(seed=2)
    res = beam_search(m, obs, game, vm, 2, 3, GAMMA, ct, ca, cv, return_tree=True)
    for i in range(3):
        nodes = res.trees[i].nodes
        assert all(n.depth <= 1 for n in nodes)  # terminated paths are not expanded
        d1 = [n for n in nodes if n.depth == 1]
        assert all(n.terminal and n.score == pytest.approx(n.reward) for n in d1)  # no bootstrap
        assert int(res.actions[i]) == max(d1, key=lambda n: n.score).action
    seq = beam_search_sequential(m, obs, game, vm, 2, 3, GAMMA, ct, ca, cv)
    assert seq.tolist() == res.actions.tolist()


@torch.no_grad()
def test_batched_equals_each_env_alone_and_sequential(model):
    N = 4
    obs, game, vm, ct, ca, cv = _inputs(N=N, C=2, seed=3)
    K = torch.tensor([3, 2, 1, 3])  # per-env beam widths
    batched = beam_search(model, obs, game, vm, 2, K, GAMMA, ct, ca, cv)
    alone = [
        int(beam_search(model, obs[i:i + 1], game[i:i + 1], vm[i:i + 1], 2, int(K[i]), GAMMA,
                        ct[i:i + 1], ca[i:i + 1], cv[i:i + 1]).actions[0])
        for i in range(N)
    ]
    assert batched.actions.tolist() == alone
    seq = beam_search_sequential(model, obs, game, vm, 2, K, GAMMA, ct, ca, cv)
    assert seq.tolist() == alone


@torch.no_grad()
def test_tree_contract(model):
    import copy

    model = copy.deepcopy(model)
    model.term_head[-1].bias.copy_(torch.tensor([20.0, -20.0]))  # no termination: full trees
    obs, game, vm, ct, ca, cv = _inputs(seed=4)
    res = beam_search(model, obs, game, vm, 2, 2, GAMMA, ct, ca, cv, return_tree=True)
    for i, tree in enumerate(res.trees):
        assert tree.chosen_action == int(res.actions[i])
        root = tree.nodes[0]
        assert root.parent == -1 and root.depth == 0
        ids = {n.id for n in tree.nodes}
        assert all(n.parent in ids for n in tree.nodes[1:])
        for depth in (1, 2):
            layer = [n for n in tree.nodes if n.depth == depth]
            assert sum(n.kept for n in layer) == 2 and len(layer) == 2 * depth
            assert all(n.action < int(N_ACT[game[i]]) for n in layer)
        # depth-2 nodes hang only under kept depth-1 nodes
        kept1 = {n.id for n in tree.nodes if n.depth == 1 and n.kept}
        assert all(n.parent in kept1 for n in tree.nodes if n.depth == 2)
        best_leaf = max((n for n in tree.nodes if n.depth == 2), key=lambda n: n.score)
        assert tree.nodes[best_leaf.parent].action == tree.chosen_action


@torch.no_grad()
def test_planner_policy_context_and_reset(model):
    torch.manual_seed(0)
    tok = Tokenizer(world_action_config("jowa-tiny").tokenizer).eval()
    policy = PlannerPolicy(model, tok, [4, 6, 3], horizon=1, beam_width=2, context_steps=2)
    rng = np.random.default_rng(0)
    obs1 = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    obs2 = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    games = np.array([0, 1])
    a1 = policy.act(obs1, games)
    assert a1.dtype == np.int64 and a1.shape == (2,)
    probs, support = policy.q_distribution(obs2, games)  # inspectors call this before act
    a2 = policy.act(obs2, games)
    # Second decision = beam search with the first step as context.
    t1 = tok.encode(torch.from_numpy(obs1[:, -1]))
    t2 = tok.encode(torch.from_numpy(obs2[:, -1]))
    vm = torch.arange(18)[None] < torch.tensor([4, 6])[:, None]
    ref = beam_search(model, t2, torch.tensor(games), vm, 1, 2, 0.99,
                      t1[:, None], torch.from_numpy(a1)[:, None], torch.ones(2, 1, dtype=torch.bool))
    assert a2.tolist() == ref.actions.tolist()
    # q_distribution read the same context (and did not act).
    assert probs.shape == (2, 18, 51) and support.shape == (51,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose((probs * support).sum(-1)[vm.numpy()], ref.root_q[vm].numpy(), atol=1e-4)
    # After reset(env 0), env 0 plans without context: same as a fresh policy on obs2.
    policy.reset([0])
    a3 = policy.act(obs2, games)
    fresh = PlannerPolicy(model, tok, [4, 6, 3], horizon=1, beam_width=2, context_steps=2).act(obs2, games)
    assert a3[0] == fresh[0]


def test_policy_validates_settings(model):
    tok = Tokenizer(world_action_config("jowa-tiny").tokenizer)
    with pytest.raises(ValueError, match=r"context_steps must be in \[0, 5\]"):
        PlannerPolicy(model, tok, [4, 6, 3], horizon=2, context_steps=6)
    with pytest.raises(ValueError, match="3 entries"):
        PlannerPolicy(model, tok, [4, 6, 3], beam_width=[2, 3])
    with pytest.raises(ValueError, match="task embeddings"):
        PlannerPolicy(model, tok, [4, 6], horizon=1)
    with pytest.raises(TypeError, match="uint8"):
        PlannerPolicy(model, tok, [4, 6, 3], horizon=1).act(np.zeros((1, 4, 84, 84), np.float32), np.zeros(1, np.int64))


# ----------------------------------------------------------------------------- what the inspector reads


def _softmax_q_at(model, toks, flags, game):
    """C51 probabilities (18, atoms) at the last token, by a full forward and the head's own MLP."""
    h = _full(model, toks, flags, game)
    head = model.q_head.heads[0]  # one head in jowa-tiny: the mixture is that head
    return torch.softmax(head(h).float().view(18, -1), -1)


def _no_termination(model):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        m.term_head[-1].bias.copy_(torch.tensor([20.0, -20.0]))
    return m


def _best_path_from_tree(tree, horizon):
    """Actions root -> best depth-H leaf, read off the tree's nodes."""
    leaf = max((n for n in tree.nodes if n.depth == horizon), key=lambda n: n.score)
    path, node = [], leaf
    while node.parent != -1:
        path.append(node.action)
        node = tree.nodes[node.parent]
    return path[::-1]


@torch.no_grad()
def _uncached_rollout_tokens(model, toks, flags, game, actions):
    """Feed each action then greedily decode 36 tokens, every token by a full uncached forward."""
    seq, fl, frames = list(toks), list(flags), []
    for a in actions:
        seq, fl = seq + [int(a)], fl + [True]
        frame = []
        for _ in range(36):
            tok = int(model.obs_head(_full(model, seq, fl, game)).argmax(-1))
            frame.append(tok)
            seq, fl = seq + [tok], fl + [False]
        frames.append(frame)
    return torch.tensor(frames)


@torch.no_grad()
def test_root_probs_equal_full_forward_softmax(model):
    obs, game, vm, ct, ca, cv = _inputs(seed=5)
    for H, K in ((2, 2), (0, 3)):  # a real search and the greedy shortcut both report them
        res = beam_search(model, obs, game, vm, H, K, GAMMA, ct, ca, cv)
        assert res.root_probs.shape == (3, 18, 51)
        for i in range(3):
            toks, flags = _prefix_seq(ct[i], ca[i], cv[i], obs[i])
            want = _softmax_q_at(model, toks, flags, int(game[i]))
            torch.testing.assert_close(res.root_probs[i], want, rtol=1e-4, atol=1e-6)
            # root_q is their expectation on the valid slots
            q = (want * model.support).sum(-1)
            torch.testing.assert_close(res.root_q[i][vm[i]], q[vm[i]], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_predicted_tokens_of_chosen_path_equal_uncached_rollout(model):
    m = _no_termination(model)
    H = 3
    obs, game, vm, ct, ca, cv = _inputs(seed=6)
    res = beam_search(m, obs, game, vm, H, 2, GAMMA, ct, ca, cv, return_tree=True)
    assert res.path_tokens.shape == (3, H, 36) and res.path_actions.shape == (3, H)
    assert res.path_valid.all()
    assert res.path_actions[:, 0].tolist() == res.actions.tolist()
    for i in range(3):
        path = _best_path_from_tree(res.trees[i], H)
        assert res.path_actions[i].tolist() == path
        toks, flags = _prefix_seq(ct[i], ca[i], cv[i], obs[i])
        want = _uncached_rollout_tokens(m, toks, flags, int(game[i]), path)
        assert torch.equal(res.path_tokens[i], want)
    # Without a tree nothing of the path is kept (the search itself is unchanged).
    plain = beam_search(m, obs, game, vm, H, 2, GAMMA, ct, ca, cv)
    assert plain.path_tokens is None and plain.actions.tolist() == res.actions.tolist()


@torch.no_grad()
def test_predicted_path_ends_at_predicted_termination():
    torch.manual_seed(1)
    m = WorldActionModel(world_action_config("jowa-tiny", num_games=3)).eval()
    m.term_head[-1].bias.copy_(torch.tensor([-20.0, 20.0]))  # every step ends the episode
    obs, game, vm, ct, ca, cv = _inputs(seed=7)
    res = beam_search(m, obs, game, vm, 2, 2, GAMMA, ct, ca, cv, return_tree=True)
    assert not res.path_valid.any()  # the frame after a terminal step is no successor state
    assert res.path_actions[:, 0].tolist() == res.actions.tolist()
    assert (res.path_actions[:, 1] == -1).all()  # the carried (ended) path takes no second action


@torch.no_grad()
def test_planner_policy_keeps_root_probs_and_decodes_predicted_frames(model):
    torch.manual_seed(0)
    m = _no_termination(model)
    tok = Tokenizer(world_action_config("jowa-tiny").tokenizer).eval()
    policy = PlannerPolicy(m, tok, [4, 6, 3], horizon=2, beam_width=2, context_steps=2, return_tree=True)
    assert policy.last_root_probs is None and policy.decode_predicted_frames() is None
    rng = np.random.default_rng(1)
    obs1, obs2 = (rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8) for _ in range(2))
    games = np.array([2, 1])
    a1 = policy.act(obs1, games)
    a2 = policy.act(obs2, games)  # plans with step 1 as context
    t1 = tok.encode(torch.from_numpy(obs1[:, -1]))
    t2 = tok.encode(torch.from_numpy(obs2[:, -1]))
    np.testing.assert_allclose(policy.support, np.linspace(-10, 30, 51), atol=1e-5)
    assert policy.last_root_probs.shape == (2, 18, 51) and policy.last_predicted_tokens.shape == (2, 2, 36)
    for i in range(2):
        toks = t1[i].tolist() + [int(a1[i])] + t2[i].tolist()
        flags = [False] * 36 + [True] + [False] * 36
        want = _softmax_q_at(m, toks, flags, int(games[i]))
        np.testing.assert_allclose(policy.last_root_probs[i], want.numpy(), rtol=1e-4, atol=1e-6)
        path = _best_path_from_tree(policy.last_trees[i], 2)
        assert path[0] == a2[i] and policy.last_path_actions[i].tolist() == path
        pred = _uncached_rollout_tokens(m, toks, flags, int(games[i]), path)
        np.testing.assert_array_equal(policy.last_predicted_tokens[i], pred.numpy())
    frames = policy.decode_predicted_frames()
    assert frames.dtype == np.uint8 and frames.shape == (2, 2, 84, 84)
    want = (tok.decode(torch.from_numpy(policy.last_predicted_tokens)) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(frames, want)
    assert len(np.unique(frames)) > 2  # a real decoded image, not a constant
    # Without trees: root distributions still, no path and nothing to decode.
    policy.return_tree = False
    policy.act(obs2, games)
    assert policy.last_root_probs.shape == (2, 18, 51)
    assert policy.last_predicted_tokens is None and policy.decode_predicted_frames() is None


@torch.no_grad()
def test_context_holds_the_executed_action_not_the_planned_one(model):
    """What the agent did vs what it planned: after ``observe``, the next decision reads the
    executed action (as an ALE id) in its context. Reference: the C51 probabilities of a full,
    uncached forward over [frame 1, executed action, frame 2]. Mutation caught: ``observe``
    ignored (the context keeps the planned action) or storing the executed minimal index
    unmapped (Breakout's LEFT is minimal 3, ALE 4)."""
    from workbench import games as G

    names = ("Breakout", "Pong", "Freeway")
    torch.manual_seed(0)
    tok = Tokenizer(world_action_config("jowa-tiny").tokenizer).eval()
    policy = PlannerPolicy(model, tok, names, horizon=1, beam_width=2, context_steps=2)
    rng = np.random.default_rng(3)
    obs1, obs2 = (rng.integers(0, 256, (3, 4, 84, 84), dtype=np.uint8) for _ in range(2))
    gids = np.array([0, 1, 2])
    with pytest.raises(RuntimeError, match="preceding act"):
        policy.observe(np.zeros(3, np.int64), np.zeros(3))
    planned = policy.act(obs1, gids)
    n = np.array([G.num_actions(g) for g in names])
    executed = (planned + 1) % n  # epsilon replaced every action
    with pytest.raises(ValueError, match="one action and one reward per environment"):
        policy.observe(executed[:2], np.zeros(2))
    policy.observe(executed, np.array([1.0, 0.0, -1.0]))
    policy.act(obs2, gids)
    t1 = tok.encode(torch.from_numpy(obs1[:, -1]))
    t2 = tok.encode(torch.from_numpy(obs2[:, -1]))
    for i, name in enumerate(names):
        ale = list(G.minimal_action_set(name))
        got = policy.last_root_probs[i, : n[i]]  # slot j = minimal action j

        def probs_after(a_min: int, i: int = i, ale: list[int] = ale) -> np.ndarray:
            toks = t1[i].tolist() + [ale[a_min]] + t2[i].tolist()
            return _softmax_q_at(model, toks, [False] * 36 + [True] + [False] * 36, i)[ale].numpy()

        np.testing.assert_allclose(got, probs_after(int(executed[i])), rtol=1e-4, atol=1e-6)
        assert not np.allclose(got, probs_after(int(planned[i])), rtol=1e-3, atol=1e-5)

"""Losses of Scaled QL against brute-force references (Python loops in float64, never the code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench import losses as L

A = 18


# ----------------------------------------------------------------------------- references


def ref_projection(p: np.ndarray, r: float, d: float, z: np.ndarray) -> np.ndarray:
    """Bellemare et al. (2017) Algorithm 1: floor/ceil split of each source atom's mass."""
    vmin, vmax, n = z[0], z[-1], len(z)
    dz = (vmax - vmin) / (n - 1)
    m = np.zeros(n)
    for j in range(n):
        tz = min(max(r + d * z[j], vmin), vmax)
        b = (tz - vmin) / dz
        lo, hi = math.floor(b), math.ceil(b)
        if abs(b - round(b)) < 1e-9:  # lands on an atom (up to rounding of b)
            m[int(round(b))] += p[j]
        else:
            m[lo] += p[j] * (hi - b)
            m[hi] += p[j] * (b - lo)
    return m


def ref_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    mx = x.max()
    return x - mx - math.log(sum(math.exp(v - mx) for v in x))


def random_mask(b: int, rng: np.random.Generator) -> torch.Tensor:
    n = rng.integers(1, A + 1, size=b)
    n[0] = 1  # a single valid action
    return torch.arange(A)[None, :] < torch.as_tensor(n)[:, None]


def random_valid_actions(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return torch.tensor([int(rng.integers(0, int(row.sum()))) for row in mask], dtype=torch.long)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add overhead on the shared 2-core machine.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


SUPPORT = L.make_support(-10.0, 10.0, 51)


def project(p, r, d, z=SUPPORT):
    return L.categorical_projection(
        torch.as_tensor(p, dtype=torch.float32),
        torch.as_tensor(r, dtype=torch.float32),
        torch.as_tensor(d, dtype=torch.float32),
        z,
    ).double().numpy()


# ----------------------------------------------------------------------------- projection


def test_projection_random_matches_reference(rng):
    z = SUPPORT.double().numpy()
    b = 64
    p = rng.dirichlet(np.ones(51) * 0.3, size=b)
    r = rng.uniform(-4, 4, size=b)
    d = rng.choice([0.0, 0.99, 0.99**3, 1.0, 0.5], size=b)
    got = project(p, r, d)
    for k in range(b):
        np.testing.assert_allclose(got[k], ref_projection(p[k], r[k], d[k], z), atol=2e-6)


@pytest.mark.parametrize(
    "r,d",
    [
        (0.7, 0.0),  # terminal: all mass at r, split between its two neighbouring atoms
        (1.2, 0.0),  # terminal, r exactly on an atom
        (100.0, 0.99),  # every target beyond vmax
        (-100.0, 0.99),  # every target beyond vmin
        (5.0, 0.99**3),  # 3-step discount, part of the mass clipped at vmax
        (-5.0, 0.99**3),  # ... at vmin
        (0.4, 1.0),  # shift by exactly one atom: lands on atoms
        (0.0, 1.0),  # identity
        (0.13, 0.97),
    ],
)
def test_projection_edge_cases(r, d, rng):
    z = SUPPORT.double().numpy()
    p = rng.dirichlet(np.ones(51), size=1)
    got = project(p, [r], [d])[0]
    np.testing.assert_allclose(got, ref_projection(p[0], r, d, z), atol=2e-6)
    assert abs(got.sum() - 1.0) < 1e-5
    assert (got >= 0).all()


def test_projection_exact_cases():
    z = SUPPORT.double().numpy()
    dz = z[1] - z[0]
    delta = np.zeros((1, 51))
    delta[0, 25] = 1.0  # a point mass at 0
    # terminal with reward on atom 30 -> one-hot on atom 30
    got = project(delta, [z[30]], [0.0])[0]
    assert got[30] == pytest.approx(1.0, abs=1e-6) and got.sum() == pytest.approx(1.0, abs=1e-6)
    # reward a quarter-atom above atom 30 -> 0.75 / 0.25 split
    got = project(delta, [z[30] + 0.25 * dz], [0.0])[0]
    assert got[30] == pytest.approx(0.75, abs=1e-5) and got[31] == pytest.approx(0.25, abs=1e-5)
    # beyond the support on both sides: one-hot on the edge atoms
    assert project(np.full((1, 51), 1 / 51), [1e3], [0.99])[0][-1] == pytest.approx(1.0, abs=1e-6)
    assert project(np.full((1, 51), 1 / 51), [-1e3], [0.99])[0][0] == pytest.approx(1.0, abs=1e-6)


def test_projection_conserves_mass_and_mean(rng):
    z = SUPPORT.double().numpy()
    p = rng.dirichlet(np.ones(51), size=32)
    # small r and d < 1 keep every r + d z_j inside [-10, 10] when |r| <= 10 (1 - d)
    d = np.full(32, 0.9)
    r = rng.uniform(-0.9, 0.9, size=32)
    got = project(p, r, d)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got @ z, r + d * (p @ z), atol=1e-4)


# ----------------------------------------------------------------------------- cross-entropy


def test_distributional_td_loss_matches_manual(rng):
    b = 16
    logits = torch.tensor(rng.normal(size=(b, A, 51)) * 3, dtype=torch.float32)
    actions = torch.tensor(rng.integers(0, A, size=b))
    target = torch.tensor(rng.dirichlet(np.ones(51), size=b), dtype=torch.float32)
    got = L.distributional_td_loss(logits, actions, target).numpy()
    for k in range(b):
        ref = -np.sum(target[k].double().numpy() * ref_log_softmax(logits[k, actions[k]].numpy()))
        assert got[k] == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_distributional_td_loss_finite_for_extreme_logits():
    logits = torch.zeros(2, A, 51)
    logits[:, 0, 0] = 1e4  # softmax underflows to exact 0 elsewhere: log(p) would be -inf
    target = torch.full((2, 51), 1 / 51)
    logits.requires_grad_(True)
    loss = L.distributional_td_loss(logits, torch.zeros(2, dtype=torch.long), target)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_td_loss_gradient_only_on_data_action(rng):
    logits = torch.tensor(rng.normal(size=(4, A, 51)), dtype=torch.float32, requires_grad=True)
    actions = torch.tensor([0, 3, 17, 5])
    target = torch.full((4, 51), 1 / 51)
    L.distributional_td_loss(logits, actions, target).sum().backward()
    for k in range(4):
        others = [a for a in range(A) if a != actions[k]]
        assert logits.grad[k, others].abs().max() == 0
        assert logits.grad[k, actions[k]].abs().max() > 0


# ----------------------------------------------------------------------------- expected Q / argmax


def test_expected_q_and_masked_argmax(rng):
    z = SUPPORT.double().numpy()
    logits = torch.tensor(rng.normal(size=(8, A, 51)), dtype=torch.float32)
    q = L.expected_q(logits, SUPPORT).numpy()
    mask = random_mask(8, rng)
    for k in range(8):
        for a in range(A):
            ls = logits[k, a].double().numpy()
            p = np.exp(ls - ls.max())
            p /= p.sum()
            assert q[k, a] == pytest.approx(float(p @ z), abs=1e-4)
    qt = torch.tensor(q)
    qt[~mask] = 1e9  # invalid slots with huge values must never win
    got = L.masked_argmax(qt, mask)
    for k in range(8):
        valid = [a for a in range(A) if mask[k, a]]
        assert int(got[k]) == max(valid, key=lambda a: q[k, a])


# ----------------------------------------------------------------------------- CQL / BC


def test_cql_matches_bruteforce_logsumexp(rng):
    b = 16
    q = torch.tensor(rng.normal(size=(b, A)) * 5, dtype=torch.float32)
    mask = random_mask(b, rng)
    actions = random_valid_actions(mask, rng)
    got = L.cql_loss(q, actions, mask).numpy()
    for k in range(b):
        vals = [float(q[k, a]) for a in range(A) if mask[k, a]]
        mx = max(vals)
        ref = mx + math.log(sum(math.exp(v - mx) for v in vals)) - float(q[k, actions[k]])
        assert got[k] == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert got[0] == pytest.approx(0.0, abs=1e-6)  # one valid action: CQL term vanishes


def test_cql_on_expected_q_not_logits():
    # Two actions with identical logits up to a constant shift: same distribution, same Q.
    logits = torch.zeros(1, A, 51)
    logits[0, 1] += 100.0
    mask = torch.zeros(1, A, dtype=torch.bool)
    mask[0, :2] = True
    q = L.expected_q(logits, SUPPORT)
    assert L.cql_loss(q, torch.tensor([0]), mask).item() == pytest.approx(math.log(2), abs=1e-5)


def test_bc_loss_matches_manual(rng):
    b = 16
    logits = torch.tensor(rng.normal(size=(b, A)) * 3, dtype=torch.float32)
    mask = random_mask(b, rng)
    actions = random_valid_actions(mask, rng)
    got = L.bc_loss(logits, actions, mask).numpy()
    for k in range(b):
        valid = [a for a in range(A) if mask[k, a]]
        ls = ref_log_softmax(logits[k, valid].numpy())
        assert got[k] == pytest.approx(-ls[valid.index(int(actions[k]))], rel=1e-5, abs=1e-6)


def test_invalid_slots_never_affect_losses_or_gradients(rng):
    b = 12
    mask = random_mask(b, rng)
    actions = random_valid_actions(mask, rng)
    base = torch.tensor(rng.normal(size=(b, A, 51)), dtype=torch.float32)
    garbage = base.clone()
    garbage[~mask] = torch.tensor(rng.normal(size=(int((~mask).sum()), 51)) * 1e3, dtype=torch.float32)
    target = torch.tensor(rng.dirichlet(np.ones(51), size=b), dtype=torch.float32)
    r = torch.tensor(rng.uniform(-1, 1, size=b), dtype=torch.float32)
    d = torch.full((b,), 0.99**3)
    outs = []
    for logits in (base, garbage):
        x = logits.clone().requires_grad_(True)
        q = L.expected_q(x, SUPPORT)
        loss = (
            L.distributional_td_loss(x, actions, target)
            + L.cql_loss(q, actions, mask)
            + L.bc_loss(q, actions, mask)
        )
        loss.sum().backward()
        assert x.grad[~mask].abs().max() == 0
        qm = x.detach()[..., 0]  # (B, 18) values for the MSE path
        outs.append(
            (
                loss.detach(),
                L.masked_argmax(q.detach(), mask),
                L.c51_target(x.detach(), r, d, mask, SUPPORT),
                L.mse_target(qm, r, d, mask),
                L.cql_loss(qm, actions, mask),
            )
        )
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_) or torch.allclose(a, b_, atol=1e-6)


# ----------------------------------------------------------------------------- targets


def test_c51_target_matches_bruteforce(rng):
    b = 10
    z = SUPPORT.double().numpy()
    logits = torch.tensor(rng.normal(size=(b, A, 51)) * 2, dtype=torch.float32)
    mask = random_mask(b, rng)
    r = rng.uniform(-2, 2, size=b)
    d = rng.choice([0.0, 0.99**3], size=b)
    r_t, d_t = torch.tensor(r, dtype=torch.float32), torch.tensor(d, dtype=torch.float32)
    got = L.c51_target(logits, r_t, d_t, mask, SUPPORT)
    for k in range(b):
        best_q, best_p = -np.inf, None
        for a in range(A):
            if not mask[k, a]:
                continue
            p = np.exp(ref_log_softmax(logits[k, a].numpy()))
            if p @ z > best_q:
                best_q, best_p = p @ z, p
        np.testing.assert_allclose(got[k].numpy(), ref_projection(best_p, r[k], d[k], z), atol=2e-6)


def test_c51_target_double_q_selects_with_online(rng):
    logits_t = torch.zeros(1, A, 51)
    logits_t[0, 0, -1] = 5.0  # target net prefers action 0 (mass near vmax)
    logits_o = torch.zeros(1, A, 51)
    logits_o[0, 1, -1] = 5.0  # online net prefers action 1
    mask = torch.zeros(1, A, dtype=torch.bool)
    mask[0, :2] = True
    r, d = torch.zeros(1), torch.ones(1)
    uniform = L.c51_target(logits_t, r, d, mask, SUPPORT, online_next_logits=logits_o)
    assert torch.allclose(uniform, torch.softmax(logits_t[0, 1], -1)[None], atol=1e-6)
    own = L.c51_target(logits_t, r, d, mask, SUPPORT)
    assert torch.allclose(own, torch.softmax(logits_t[0, 0], -1)[None], atol=1e-6)


def test_mse_target_and_loss(rng):
    b = 8
    q_next = torch.tensor(rng.normal(size=(b, A)), dtype=torch.float32)
    q = torch.tensor(rng.normal(size=(b, A)), dtype=torch.float32)
    mask = random_mask(b, rng)
    actions = random_valid_actions(mask, rng)
    r = torch.tensor(rng.uniform(-1, 1, size=b), dtype=torch.float32)
    d = torch.tensor(rng.choice([0.0, 0.97], size=b), dtype=torch.float32)
    y = L.mse_target(q_next, r, d, mask)
    loss = L.mse_td_loss(q, actions, y)
    for k in range(b):
        best = max(float(q_next[k, a]) for a in range(A) if mask[k, a])
        ref_y = float(r[k]) + float(d[k]) * best
        assert float(y[k]) == pytest.approx(ref_y, abs=1e-5)
        assert float(loss[k]) == pytest.approx((float(q[k, actions[k]]) - ref_y) ** 2, abs=1e-5)


def test_reward_scale(rng):
    returns = torch.tensor([1.0, -3.0, 2.0, 10.0, 0.0])
    gid = torch.tensor([0, 0, 1, 1, 1])
    s = L.return_scale(returns, gid, num_games=3)
    assert s[0].item() == pytest.approx(math.sqrt((1 + 9) / 2), rel=1e-6)
    assert s[1].item() == pytest.approx(math.sqrt((4 + 100 + 0) / 3), rel=1e-6)
    assert s[2].item() == 1.0  # no samples
    assert L.return_scale(torch.zeros(2), torch.zeros(2, dtype=torch.long), 1).item() == pytest.approx(1e-2)
    r = L.scale_rewards(torch.tensor([2.0, 2.0]), torch.tensor([0, 1]), torch.tensor([2.0, 4.0]))
    assert r.tolist() == [1.0, 0.5]


# ----------------------------------------------------------------------------- tabular convergence


def chain_mdp(n: int = 5, gamma: float = 0.9):
    """Deterministic chain, 3 valid actions of 18 slots: 0 left (r -0.1), 1 stay (r 0), 2 right.

    Right from the last state gives +1 and terminates; otherwise right gives 0.
    Returns transitions (s, a, r, s', discount) for every (s, a) and Q* from value iteration.
    """
    trans = []
    for s in range(n):
        trans.append((s, 0, -0.1, max(s - 1, 0), gamma))
        trans.append((s, 1, 0.0, s, gamma))
        trans.append((s, 2, 1.0 if s == n - 1 else 0.0, min(s + 1, n - 1), 0.0 if s == n - 1 else gamma))
    q = np.zeros((n, 3))
    for _ in range(2000):  # value iteration to machine precision
        new = np.zeros_like(q)
        for s, a, r, s2, d in trans:
            new[s, a] = r + d * q[s2].max()
        q = new
    return trans, q


def _batch(trans):
    s, a, r, s2, d = (torch.tensor(x) for x in zip(*trans))
    return s.long(), a.long(), r.float(), s2.long(), d.float()


def test_c51_tabular_converges_to_value_iteration():
    torch.manual_seed(0)
    trans, q_star = chain_mdp()
    n = q_star.shape[0]
    support = L.make_support(-2.0, 2.0, 41)
    s, a, r, s2, d = _batch(trans)
    mask = torch.zeros(len(trans), A, dtype=torch.bool)
    mask[:, :3] = True
    logits = torch.nn.Parameter(torch.randn(n, A, 41))
    with torch.no_grad():
        logits[:, 3:] = 50.0  # invalid slots look extremely good: must be ignored everywhere
    opt = torch.optim.Adam([logits], lr=0.3)
    for _ in range(15):  # target-network periods (CQL alpha = 0)
        target = L.c51_target(logits.detach()[s2], r, d, mask, support)
        for _ in range(40):
            loss = L.distributional_td_loss(logits[s], a, target).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    q = L.expected_q(logits.detach(), support)[:, :3].double().numpy()
    np.testing.assert_allclose(q, q_star, atol=2e-2)
    assert (q.argmax(1) == q_star.argmax(1)).all()


def test_mse_tabular_converges_to_value_iteration():
    torch.manual_seed(0)
    trans, q_star = chain_mdp()
    n = q_star.shape[0]
    s, a, r, s2, d = _batch(trans)
    mask = torch.zeros(len(trans), A, dtype=torch.bool)
    mask[:, :3] = True
    table = torch.nn.Parameter(torch.randn(n, A) * 0.1)
    with torch.no_grad():
        table[:, 3:] = 50.0
    opt = torch.optim.Adam([table], lr=0.3)
    for _ in range(15):
        y = L.mse_target(table.detach()[s2], r, d, mask)
        for _ in range(40):
            loss = L.mse_td_loss(table[s], a, y).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    np.testing.assert_allclose(table.detach()[:, :3].double().numpy(), q_star, atol=1e-2)

"""World-action model and JOWA losses against brute-force references; the JOWA algo object."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.models.world_action import (
    PRESETS,
    WorldActionModel,
    action_losses,
    count_parameters,
    world_action_config,
    world_losses,
)


def _model(seed: int = 0, **kw) -> WorldActionModel:
    torch.manual_seed(seed)
    return WorldActionModel(world_action_config("jowa-tiny", num_games=2, **kw))


def _batch(B: int = 3, L: int = 4, seed: int = 0, obs: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_act = torch.tensor([6, 4, 6])[:B]
    batch = {
        "tokens": torch.randint(0, 2048, (B, L, 36), generator=g).to(torch.uint16),
        "action": torch.stack([torch.randint(0, int(n), (L,), generator=g) for n in n_act]),
        "reward": torch.randint(-1, 2, (B, L), generator=g).float(),
        "terminal": torch.zeros(B, L),
        "mask": torch.ones(B, L, dtype=torch.bool),
        "game_id": torch.tensor([0, 1, 0])[:B],
        "valid_mask": torch.arange(18)[None] < n_act[:, None],
    }
    batch["terminal"][0, 1] = 1.0
    batch["mask"][0, 2:] = False  # padding after the terminal step
    if B > 2:
        batch["mask"][2, L - 1:] = False  # a truncated segment (no terminal)
    if obs:
        batch["obs"] = torch.randint(0, 256, (B, L, 84, 84), dtype=torch.uint8, generator=g)
    return batch


# ----------------------------------------------------------------------------- model


def test_forward_shapes_and_head_positions():
    m = _model().eval()
    b = _batch()
    out = m(b["tokens"], b["action"], b["game_id"])
    B, L = 3, 4
    assert out["obs_logits"].shape == (B, L * 37 - 1, 2048)
    assert out["reward_logits"].shape == (B, L, 3) and out["term_logits"].shape == (B, L, 2)
    assert out["q_logits"].shape == (B, L, 18, 51)
    # Q at step t reads the last observation token: it must not depend on a_t or later steps.
    b2 = {k: v.clone() for k, v in b.items()}
    b2["action"][:, 1] = (b2["action"][:, 1] + 1) % 3
    b2["tokens"][:, 2:] = 7
    out2 = m(b2["tokens"], b2["action"], b2["game_id"])
    torch.testing.assert_close(out2["q_logits"][:, :2], out["q_logits"][:, :2])
    # ... while the reward head of step 1 (at the action token) does see a_1.
    assert not torch.allclose(out2["reward_logits"][:, 1], out["reward_logits"][:, 1])
    # Task embeddings: changing the game changes the outputs.
    out3 = m(b["tokens"], b["action"], 1 - b["game_id"])
    assert not torch.allclose(out3["q_logits"], out["q_logits"])


def test_ensemble_averages_probabilities():
    m = _model(q_heads=3).eval()
    h = torch.randn(5, m.cfg.n_embd)
    mix = m.q_head(h).exp()
    each = torch.stack([F.softmax(head(h).view(5, 18, 51), -1) for head in m.q_head.heads])
    torch.testing.assert_close(mix, each.mean(0), atol=1e-6, rtol=1e-5)


def test_target_head_copy_and_no_grad():
    m = _model()
    m.train()
    assert not m.target_q_head.training  # no dropout in TD targets
    with torch.no_grad():
        for p in m.q_head.parameters():
            p.add_(0.1)
    h = torch.randn(4, m.cfg.n_embd)
    m.eval()
    assert not torch.allclose(m.target_q_logits(h), m.q_head(h))
    m.update_target()
    torch.testing.assert_close(m.target_q_logits(h), m.q_head(h))
    assert all(not p.requires_grad for p in m.target_q_head.parameters())
    assert not m.target_q_logits(h.requires_grad_()).requires_grad


def test_parameter_counts_add_up():
    for name in ("jowa-tiny", "jowa-40m"):
        cfg = world_action_config(name, num_games=15)
        m = WorldActionModel(cfg)
        c = count_parameters(m)
        parts = c["backbone"] + c["world_heads"] + c["q_heads"] + c["target_q_heads"]
        assert parts == sum(p.numel() for p in m.parameters())
        assert c["q_heads"] == c["target_q_heads"]
    # Backbone formula for jowa-40m: per layer 12 D^2 + 13 D; embeddings; final LayerNorm.
    D, n_layer = 512, 4
    expected = n_layer * (12 * D * D + 13 * D) + 2 * D + (2048 + 18 + 2 * 15 + 296) * D
    assert c["backbone"] == expected


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="jowa-40m, jowa-70m, jowa-150m, jowa-tiny"):
        world_action_config("jowa-1b")
    assert set(PRESETS) >= {"jowa-40m", "jowa-70m", "jowa-150m", "jowa-tiny"}


# ----------------------------------------------------------------------------- losses vs brute force


def _brute_world_loss(out, tokens, actions, rewards, terminals, mask):
    B, L, _ = tokens.shape
    obs_terms, r_terms, d_terms = [], [], []
    for b in range(B):
        seq = []
        for t in range(L):
            seq += [(int(x), "obs", t) for x in tokens[b, t]] + [(int(actions[b, t]), "act", t)]
        for p in range(len(seq) - 1):
            tok, kind, t = seq[p + 1]
            if kind != "obs" or not mask[b, t] or (t > 0 and terminals[b, t - 1] > 0):
                continue
            obs_terms.append(-F.log_softmax(out["obs_logits"][b, p].double(), -1)[tok])
        for t in range(L):
            if mask[b, t]:
                reward_class = int(torch.sign(rewards[b, t])) + 1
                r_terms.append(-F.log_softmax(out["reward_logits"][b, t].double(), -1)[reward_class])
                d_terms.append(-F.log_softmax(out["term_logits"][b, t].double(), -1)[int(terminals[b, t] > 0)])
    mean = lambda xs: torch.stack(xs).mean()  # noqa: E731
    return mean(obs_terms) + mean(r_terms) + mean(d_terms)


def test_world_loss_matches_brute_force_and_ignores_padding():
    m = _model().eval()
    b = _batch()
    tokens = b["tokens"].long()
    out = m(tokens, b["action"], b["game_id"])
    loss, _ = world_losses(out, tokens, b["action"], b["reward"], b["terminal"], b["mask"])
    ref = _brute_world_loss(out, tokens, b["action"], b["reward"], b["terminal"], b["mask"])
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)
    # Changing padded steps' targets does not change the loss (the logits are held fixed).
    t2, r2, d2 = tokens.clone(), b["reward"].clone(), b["terminal"].clone()
    t2[0, 2:], r2[0, 2:], d2[0, 2:] = 5, 1.0, 1.0
    t2[2, 3], r2[2, 3] = 9, -1.0
    loss2, _ = world_losses(out, t2, b["action"], r2, d2, b["mask"])
    torch.testing.assert_close(loss2, loss)


def _project(p_next, r, discount, support):
    """Brute-force C51 projection, atom by atom (Bellemare et al. 2017, Alg. 1)."""
    vmin, vmax, n = float(support[0]), float(support[-1]), len(support)
    dz = (vmax - vmin) / (n - 1)
    m = torch.zeros(n, dtype=torch.float64)
    for j in range(n):
        tz = min(max(r + discount * float(support[j]), vmin), vmax)
        bj = (tz - vmin) / dz
        lo, hi = math.floor(bj), math.ceil(bj)
        if lo == hi:
            m[lo] += p_next[j]
        else:
            m[lo] += p_next[j] * (hi - bj)
            m[hi] += p_next[j] * (bj - lo)
    return m


def test_action_loss_matches_brute_force_and_masks_invalid(monkeypatch):
    m = _model().eval()
    b = _batch(seed=1)
    B, L = 3, 4
    g = torch.Generator().manual_seed(5)
    q_logits = torch.randn(B, L, 18, 51, generator=g) * 2
    target_logits = torch.randn(B, L - 1, 18, 51, generator=g) * 2
    out = {"q_logits": q_logits, "features": torch.zeros(B, L, m.cfg.n_embd)}
    monkeypatch.setattr(m, "target_q_logits", lambda feats: target_logits)
    gamma, alpha = 0.9, 0.1
    loss, metrics = action_losses(
        m, out, b["action"], b["reward"], b["terminal"], b["mask"], b["valid_mask"], gamma, alpha
    )

    support = m.support.double()
    td_terms, cql_terms = [], []
    for i in range(B):
        valid = b["valid_mask"][i]
        for t in range(L):
            if not b["mask"][i, t]:
                continue
            q = (F.softmax(q_logits[i, t].double(), -1) * support).sum(-1)
            cql_terms.append(torch.logsumexp(q[valid], 0) - q[b["action"][i, t]])
            if t == L - 1:
                continue
            done = bool(b["terminal"][i, t] > 0)
            if not done and not b["mask"][i, t + 1]:
                continue  # successor outside the segment: no TD sample
            tp = F.softmax(target_logits[i, t].double(), -1)
            qn = (tp * support).sum(-1).masked_fill(~valid, -float("inf"))
            a_star = int(qn.argmax())
            target = _project(tp[a_star], float(b["reward"][i, t].clamp(-1, 1)), 0.0 if done else gamma, support)
            logp = F.log_softmax(q_logits[i, t, b["action"][i, t]].double(), -1)
            td_terms.append(-(target * logp).sum())
    ref = torch.stack(td_terms).mean() + alpha * torch.stack(cql_terms).mean()
    torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=1e-5)

    # Invalid action slots can hold anything: neither the CQL logsumexp nor the target argmax sees them.
    inv = ~b["valid_mask"]
    q2, tl2 = q_logits.clone(), target_logits.clone()
    big = torch.zeros(51)
    big[-1] = 50.0  # an invalid slot whose expected Q would be ~30, the best of all
    q2[inv[:, None].expand(B, L, 18)] = big
    tl2[inv[:, None].expand(B, L - 1, 18)] = big
    monkeypatch.setattr(m, "target_q_logits", lambda feats: tl2)
    loss2, _ = action_losses(m, {"q_logits": q2, "features": out["features"]}, b["action"], b["reward"],
                             b["terminal"], b["mask"], b["valid_mask"], gamma, alpha)
    torch.testing.assert_close(loss2, loss)


# ----------------------------------------------------------------------------- algo


def test_algo_param_groups_and_stages():
    algo = JOWA.build("jowa-tiny", ["Pong", "Breakout"], stage=1)
    groups = {g["name"]: g for g in algo.param_groups()}
    assert set(groups) == {"tokenizer", "world_decay", "world_no_decay"}
    assert groups["tokenizer"]["lr"] == 1e-4 and groups["tokenizer"]["weight_decay"] == 0.0
    assert "lr" not in groups["world_decay"] and groups["world_decay"]["weight_decay"] == 0.01  # trainer's lr
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert not any(id(p) in in_groups for p in algo.model.world.target_q_head.parameters())
    assert not any(id(p) in in_groups for p in algo.model.world.q_head.parameters())  # no loss in stage 1
    no_decay = {id(p) for p in groups["world_no_decay"]["params"]}
    assert id(algo.model.world.obs_emb.weight) in no_decay and id(algo.model.world.gpt.ln_f.weight) in no_decay
    algo.set_stage(2)
    groups = {g["name"]: g for g in algo.param_groups()}
    assert set(groups) == {"world_decay", "world_no_decay"}
    assert JOWA.build("jowa-tiny", ["Pong"], JOWAConfig(tokenizer_lr=3e-4)).param_groups()[0]["lr"] == 3e-4
    assert all(not p.requires_grad for p in algo.model.tokenizer.parameters())
    with pytest.raises(ValueError, match="needs 'obs'"):
        JOWA.build("jowa-tiny", ["Pong", "Breakout"], stage=1).loss(_batch(B=2))
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        JOWA.build("jowa-tiny", ["Pong"], stage=3)


def test_stage_handover():
    s1 = JOWA.build("jowa-tiny", ["Pong", "Breakout"], stage=1)
    s2 = JOWA.build("jowa-tiny", ["Pong", "Breakout"], stage=2)
    assert s1.stage == 1 and s2.stage == 2 and s2.seq_len == 8
    with torch.no_grad():
        s1.model.world.q_head.heads[0][0].weight.add_(1.0)
    s2.load_stage1(s1)
    target_weights = s2.model.world.target_q_head.module.state_dict().values()
    for (k, v), w in zip(s1.model.world.q_head.state_dict().items(), target_weights):
        assert torch.equal(v, w), k
    assert all(not p.requires_grad for p in s2.model.tokenizer.parameters())


def _train(algo: JOWA, batch, steps: int) -> list[dict[str, float]]:
    opt = torch.optim.AdamW(algo.param_groups(), lr=1e-3)
    for g in opt.param_groups:
        g["lr"] = 3e-3  # fast convergence on one repeated batch
    history = []
    algo.model.train()
    for step in range(steps):
        loss, metrics = algo.loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(algo.model.parameters(), 1.0)
        opt.step()
        history.append({"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}})
        if step % 3 == 2:
            algo.update_target()
    return history


def test_training_steps_reduce_losses():
    torch.manual_seed(0)
    algo = JOWA.build("jowa-tiny", ["Pong", "Breakout"], stage=1)
    b = _batch(B=2, L=3, obs=True)
    del b["tokens"]
    h1 = _train(algo, b, 6)
    assert h1[-1]["loss/tokenizer"] < h1[0]["loss/tokenizer"]
    assert h1[-1]["loss/world"] < h1[0]["loss/world"]
    algo.set_stage(2)
    b2 = _batch(B=2, L=3)  # pre-tokenized batch
    h2 = _train(algo, b2, 8)
    assert h2[-1]["loss"] < h2[0]["loss"]
    assert h2[-1]["loss/world"] < h2[0]["loss/world"]
    assert h2[-1]["loss/action"] < h2[0]["loss/action"]


def test_checkpoint_round_trip_through_safetensors(tmp_path):
    """The whole trained module (tokenizer, world model, target head) saves without shared tensors."""
    from safetensors.torch import load_file, save_file

    from workbench.algos.jowa import JOWAModel

    a = JOWA.build("jowa-tiny", ["Pong", "Breakout"])
    a.model.world.update_target()
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    b = JOWAModel(a.model.cfg)
    b.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert any(k.startswith("world.target_q_head.") for k in b.state_dict())


def test_td_target_bootstraps_from_the_next_steps_features():
    """Mutation caught: JOWA bootstraps from the same step's features instead of the next step's.

    Features differ per step, and the real target head reads them; the reference evaluates the
    target head on step t+1's features alone, one sample at a time."""
    m = _model().eval()
    b = _batch(seed=2)
    B, L = 3, 4
    b["mask"] = torch.ones(B, L, dtype=torch.bool)
    b["terminal"] = torch.zeros(B, L)
    g = torch.Generator().manual_seed(7)
    q_logits = torch.randn(B, L, 18, 51, generator=g)
    feats = torch.randn(B, L, m.cfg.n_embd, generator=g) * 3
    with torch.no_grad():
        for p in m.target_q_head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)  # a target head that tells steps apart
    gamma = 0.9
    loss, _ = action_losses(m, {"q_logits": q_logits, "features": feats}, b["action"], b["reward"], b["terminal"],
                            b["mask"], b["valid_mask"], gamma, 0.0)
    support = m.support.double()
    terms = []
    with torch.no_grad():
        for i in range(B):
            valid = b["valid_mask"][i]
            for t in range(L - 1):
                tp = F.softmax(m.target_q_logits(feats[i, t + 1][None])[0].double(), -1)  # (18, 51)
                a_star = int((tp * support).sum(-1).masked_fill(~valid, -float("inf")).argmax())
                target = _project(tp[a_star], float(b["reward"][i, t].clamp(-1, 1)), gamma, support)
                terms.append(-(target * F.log_softmax(q_logits[i, t, b["action"][i, t]].double(), -1)).sum())
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)

"""Samplers against brute-force references built directly from the raw DQN-Replay rows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import readahead as ra
from workbench.data import store as st
from workbench.data.sampler import SequenceSampler, TransitionSampler
from workbench.games import num_actions

ROWS, CKPTS = 500, 2
SIZES = {"Breakout": 1, "Pong": 2, "Alien": 3}  # runs per game: games of different sizes


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, st.ReplayStore]:
    root = tmp_path_factory.mktemp("dqn")
    for gi, (g, runs) in enumerate(SIZES.items()):
        for r in range(1, runs + 1):
            dr.write_synthetic_run(
                root / g / str(r) / "replay_logs", CKPTS, ROWS, seed=10 * gi + r, num_actions=num_actions(g),
                mean_episode=30, salt=100 * gi + r,
            )
    out = bd.build_store(root, tmp_path_factory.mktemp("store") / "s", list(SIZES), [1], "near_optimal", progress=False)
    return root, st.ReplayStore(out)


@pytest.fixture(scope="module")
def raw(synth) -> dict[str, list[dict[str, np.ndarray]]]:
    root, _ = synth
    return {g: [dr.load_checkpoint(root / g / "1/replay_logs", c) for c in range(CKPTS)] for g in SIZES}


def _reference(ck: dict[str, np.ndarray], slot: int, n_step: int, gamma: float) -> dict:
    """One transition by hand, straight from the checkpoint's rows (ring-indexed)."""
    n = len(ck["terminal"])
    obs, r, t = ck["observation"], ck["reward"], ck["terminal"]
    assert not any(t[(slot - k) % n] for k in (1, 2, 3)), "sampled a start whose stack crosses a terminal"
    ret, length, term = np.float32(0), 0, False
    for k in range(n_step):
        ret = np.float32(ret + np.float32(gamma**k) * r[(slot + k) % n])
        length = k + 1
        if t[(slot + k) % n]:
            term = True
            break

    def stack(s: int) -> np.ndarray:
        return np.stack([obs[(s - 3 + k) % n] for k in range(4)])

    return {
        "obs": stack(slot), "next": stack(slot + length), "reward": ret, "term": term,
        "action": int(ck["action"][slot]),
        "discount": 0.0 if term else np.float32(gamma**n_step),
    }


@pytest.mark.parametrize("n_step,gamma", [(3, 0.99), (1, 0.9)])
def test_transitions_match_bruteforce(synth, raw, n_step: int, gamma: float) -> None:
    _, s = synth
    ts = TransitionSampler(s, batch_size=96, n_step=n_step, gamma=gamma, seed=1, pin_memory=False)
    n_term = 0
    for i in range(4):
        gid, rows = ts.draw_rows(i)
        b = ts.sample(i)
        assert b["obs"].shape == (96, 4, 84, 84) and b["obs"].dtype == torch.uint8
        assert b["action"].dtype == torch.int64 and b["reward"].dtype == torch.float32
        assert b["discount"].dtype == torch.float32 and b["terminal"].dtype == torch.float32
        assert b["game_id"].dtype == torch.int64
        assert b["valid_mask"].shape == (96, 18) and b["valid_mask"].dtype == torch.bool
        for j in range(96):
            game = ts.games[int(gid[j])]
            (_, ckpt, slot), = s.source_of(game, rows[j : j + 1])
            ref = _reference(raw[game][ckpt], slot, n_step, gamma)
            np.testing.assert_array_equal(b["obs"][j].numpy(), ref["obs"])
            assert b["reward"][j].item() == pytest.approx(float(ref["reward"]), abs=1e-6)
            assert bool(b["terminal"][j]) == ref["term"]
            assert b["discount"][j].item() == pytest.approx(float(ref["discount"]), abs=1e-7)
            assert b["action"][j].item() == ref["action"]
            if not ref["term"]:
                np.testing.assert_array_equal(b["next_obs"][j].numpy(), ref["next"])
            n_term += ref["term"]
            # valid-action mask: exactly the game's minimal action set
            na = num_actions(game)
            assert b["valid_mask"][j].sum().item() == na and b["valid_mask"][j, :na].all()
    assert n_term > 0  # the terminal branch was exercised


def test_stratified_counts(synth) -> None:
    _, s = synth
    ts = TransitionSampler(s, batch_size=64, games_per_batch=16, seed=0, pin_memory=False)
    counts = np.zeros(3)
    for i in range(150):
        gid = ts.draw_rows(i)[0]
        groups = gid.reshape(16, 4)  # G draws, B/G transitions each, same game within a group
        assert (groups == groups[:, :1]).all()
        counts += np.bincount(gid, minlength=3)
    # games drawn uniformly with replacement: each about 1/3 (std of a share ~ 0.03 here)
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.05)
    with pytest.raises(st.StoreError, match="games_per_batch must be an int >= 1 dividing batch_size=64"):
        TransitionSampler(s, batch_size=64, games_per_batch=7)


def test_proportional_sampling(tmp_path: Path) -> None:
    root = tmp_path / "dqn"
    dr.write_synthetic_run(root / "Breakout/1/replay_logs", 1, 300, seed=1, num_actions=4, mean_episode=30)
    dr.write_synthetic_run(root / "Pong/1/replay_logs", 1, 1200, seed=2, num_actions=6, mean_episode=30)
    s = st.ReplayStore(bd.build_store(root, tmp_path / "s", ["Breakout", "Pong"], [1], "near_optimal", progress=False))
    ts = TransitionSampler(s, batch_size=128, stratified=False, seed=0, pin_memory=False)
    n = np.array([len(s.game(g).starts) for g in ts.games], dtype=float)
    assert n[1] > 3 * n[0]
    counts = sum(np.bincount(ts.draw_rows(i)[0], minlength=2) for i in range(60))
    assert np.allclose(counts / counts.sum(), n / n.sum(), atol=0.03)
    # stratified on the same store: games equally often despite their sizes
    tss = TransitionSampler(s, batch_size=128, seed=0, pin_memory=False)
    counts = sum(np.bincount(tss.draw_rows(i)[0], minlength=2) for i in range(60))
    assert abs(counts[0] / counts.sum() - 0.5) < 0.05


def test_determinism_prefetch_and_resume(synth) -> None:
    _, s = synth
    a = TransitionSampler(s, batch_size=32, seed=7, prefetch=1, workers=1, pin_memory=False)
    b = TransitionSampler(s, batch_size=32, seed=7, prefetch=5, workers=2, pin_memory=False)
    ia, ib = iter(a), iter(b)
    batches = [next(ia) for _ in range(5)]
    for x in batches:
        y = next(ib)
        assert all(torch.equal(x[k], y[k]) for k in x)
    # resume from a state dict reproduces the stream
    state = a.state_dict()
    nxt = next(ia)
    c = TransitionSampler(s, batch_size=32, seed=7, pin_memory=False)
    c.load_state_dict(state)
    y = next(iter(c))
    assert all(torch.equal(nxt[k], y[k]) for k in nxt)
    for t in (a, b, c):
        t.close()
    d = TransitionSampler(s, batch_size=32, seed=8, pin_memory=False)
    assert not torch.equal(d.sample(0)["obs"], batches[0]["obs"])


def test_ranks_split_the_global_batch(synth) -> None:
    """DDP: batch_size and games_per_batch are global; every rank takes G/W whole game draws of
    B/G transitions, so the ranks' batches, in rank order, are exactly the single-process batch."""
    _, s = synth
    kw = {"seed": 3, "pin_memory": False, "prefetch": 0}
    single = TransitionSampler(s, batch_size=64, games_per_batch=16, **kw)
    for world in (2, 4):
        ranks = [
            TransitionSampler(s, batch_size=64, games_per_batch=16, rank=r, world_size=world, **kw)
            for r in range(world)
        ]
        for i in range(3):
            parts = [r.sample(i) for r in ranks]
            assert all(len(p["obs"]) == 64 // world for p in parts)
            for p in parts:  # G/W groups of B/G = 4 transitions of one game each
                groups = p["game_id"].numpy().reshape(16 // world, 4)
                assert (groups == groups[:, :1]).all()
            whole = single.sample(i)
            assert _same({k: torch.cat([p[k] for p in parts]) for k in whole}, whole)
    # proportional sampling and sequences split the same way
    for cls, extra in ((TransitionSampler, {"stratified": False}), (SequenceSampler, {"seq_len": 4})):
        one = cls(s, batch_size=24, **extra, **kw).sample(5)
        two = [cls(s, batch_size=24, rank=r, world_size=2, **extra, **kw).sample(5) for r in range(2)]
        assert _same({k: torch.cat([t[k] for t in two]) for k in one}, one)
    with pytest.raises(st.StoreError, match="0 <= rank < world_size"):
        TransitionSampler(s, batch_size=8, rank=2, world_size=2)
    with pytest.raises(st.StoreError, match=r"games_per_batch=6 \(global\) must be divisible by world_size=4"):
        TransitionSampler(s, batch_size=24, games_per_batch=6, world_size=4)
    with pytest.raises(st.StoreError, match=r"batch_size=10 \(global\) must be divisible by world_size=4"):
        SequenceSampler(s, batch_size=10, world_size=4)


def _gloo_rank(rank: int, port: int, store: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ts = TransitionSampler(
        store, batch_size=64, games_per_batch=16, seed=9, rank=rank, world_size=2, pin_memory=False, prefetch=0
    )
    b = ts.sample(2)
    got = [torch.zeros_like(b["obs"]) for _ in range(2)], [torch.zeros_like(b["game_id"]) for _ in range(2)]
    dist.all_gather(got[0], b["obs"])
    dist.all_gather(got[1], b["game_id"])
    if rank == 0:
        torch.save({"obs": torch.cat(got[0]), "game_id": torch.cat(got[1])}, os.path.join(out, "gathered.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_gather_the_papers_global_batch(synth, tmp_path: Path) -> None:
    """Two real processes (gloo): the gathered batch is the single-process one -- 16 game draws x 4."""
    import socket

    import torch.multiprocessing as mp

    _, s = synth
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gloo_rank, args=(port, str(s.path), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "gathered.pt")
    whole = TransitionSampler(s, batch_size=64, games_per_batch=16, seed=9, pin_memory=False, prefetch=0).sample(2)
    assert torch.equal(got["obs"], whole["obs"]) and torch.equal(got["game_id"], whole["game_id"])
    groups = got["game_id"].numpy().reshape(16, 4)
    assert (groups == groups[:, :1]).all()


def test_sequence_masks_match_bruteforce(synth, raw) -> None:
    _, s = synth
    L = 8
    tokens = {g: (np.arange(s.rows(g) * 36, dtype=np.int64).reshape(-1, 36) % 65521).astype(np.uint16) for g in s.games}
    sq = SequenceSampler(s, batch_size=48, seq_len=L, seed=2, tokens=tokens, pin_memory=False)
    plain = SequenceSampler(s, batch_size=48, seq_len=L, seed=2, pin_memory=False)
    n_masked = 0
    for i in range(3):
        bt, b = sq.sample(i), plain.sample(i)
        assert b["obs"].shape == (48, L, 84, 84) and b["obs"].dtype == torch.uint8
        assert bt["tokens"].shape == (48, L, 36) and bt["tokens"].dtype == torch.uint16
        assert b["mask"].dtype == torch.bool and b["action"].shape == (48, L)
        for j in range(48):
            game = sq.games[int(b["game_id"][j])]
            # the first frame encodes the stream row it came from (synthetic frames, run 1)
            row_id = int(dr.frame_row_id(b["obs"][j, 0].numpy(), salt=100 * list(SIZES).index(game) + 1))
            ckpt, slot = divmod(row_id, ROWS)
            ck = raw[game][ckpt]
            ended = False
            for k in range(L):
                sl = slot + k
                # a transition start of the store (its n-step window inside the checkpoint), episode not over
                real = sl + s.n_step < ROWS and not ended
                assert bool(b["mask"][j, k]) == real
                if real:
                    np.testing.assert_array_equal(b["obs"][j, k].numpy(), ck["observation"][sl])
                    assert b["action"][j, k].item() == ck["action"][sl]
                    assert b["reward"][j, k].item() == ck["reward"][sl]
                    assert b["terminal"][j, k].item() == ck["terminal"][sl]
                    ended = bool(ck["terminal"][sl])
                else:
                    n_masked += 1
                    assert not b["obs"][j, k].any() and b["action"][j, k] == 0 and b["reward"][j, k] == 0
        m = bt["mask"].numpy()
        assert (bt["tokens"].numpy()[~m] == 0).all()
    assert n_masked > 0


def test_sequence_tokens_rows(synth) -> None:
    _, s = synth
    tokens = {g: np.repeat((np.arange(s.rows(g)) % 60000).astype(np.uint16)[:, None], 36, axis=1) for g in s.games}
    sq = SequenceSampler(s, batch_size=16, seq_len=4, seed=0, tokens=tokens, pin_memory=False)
    b = sq.sample(0)
    tok = b["tokens"].numpy().astype(np.int64)
    m = b["mask"].numpy()
    # consecutive steps come from consecutive store rows
    d = np.diff(tok[:, :, 0], axis=1)
    assert (d[m[:, 1:]] == 1).all()
    with pytest.raises(st.StoreError, match="uint16"):
        SequenceSampler(s, tokens={g: np.zeros((3, 36), np.uint16) for g in s.games})


def _same(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("look_ahead", [False, True])
def test_io_hints_do_not_change_batches(synth, tmp_path: Path, monkeypatch, look_ahead: bool) -> None:
    _, s = synth
    kw = {"batch_size": 64, "seed": 5, "pin_memory": False}
    on = TransitionSampler(s, io_hints=True, hint_ahead=2, **kw)
    off = TransitionSampler(s, io_hints=False, **kw)
    assert on._hints is not None
    if look_ahead:  # the tiny store is in RAM: keep hints from pausing, so the look-ahead thread runs too
        monkeypatch.setattr(ra, "SKIP_AFTER", 10**9)
    assert on.hint_ranges_issued == 0 and off.hint_ranges_issued == 0
    for i in (0, 1, 7, 3):  # out of order too: the look-ahead hints must not matter
        assert _same(on.sample(i), off.sample(i))
    assert on.hint_ranges_issued > 0 and off.hint_ranges_issued == 0  # hints were really issued
    if look_ahead:
        ra.hint_pool().submit(lambda: None).result()  # let queued look-ahead hints finish
        assert on._hints.claim(2) is False and on._hints.claim(9) is False  # batches hinted ahead of 1 and 7
    # through the prefetching iterator, against synchronous batches without hints
    it = iter(TransitionSampler(s, io_hints=True, prefetch=4, workers=2, **kw))
    for i in range(6):
        assert _same(next(it), off.sample(i))
    it.close()
    # sequences: frames, and tokens from a memmapped file (hinted too)
    tok_dir = tmp_path / "tok"
    for g in s.games:
        (tok_dir / g).mkdir(parents=True)
        np.save(tok_dir / g / "tokens.npy", (np.arange(s.rows(g) * 36) % 65521).astype(np.uint16).reshape(-1, 36))
    for tokens in (None, tok_dir):
        skw = {"batch_size": 24, "seq_len": 8, "seed": 4, "tokens": tokens, "pin_memory": False}
        q_on, q_off = SequenceSampler(s, io_hints=True, **skw), SequenceSampler(s, io_hints=False, **skw)
        for i in range(3):
            assert _same(q_on.sample(i), q_off.sample(i))
        assert q_on.hint_ranges_issued > 0
    # arrays in memory: nothing to hint, still the same batches
    mem = {g: np.load(tok_dir / g / "tokens.npy") for g in s.games}
    q_mem = SequenceSampler(s, batch_size=24, seq_len=8, seed=4, tokens=mem, pin_memory=False)
    q_dir = SequenceSampler(s, batch_size=24, seq_len=8, seed=4, tokens=tok_dir, io_hints=False, pin_memory=False)
    assert _same(q_mem.sample(0), q_dir.sample(0))
    assert q_mem.hint_ranges_issued == 0


def test_io_hint_options_validated(synth) -> None:
    _, s = synth
    with pytest.raises(st.StoreError, match="io_hints must be True or False"):
        TransitionSampler(s, io_hints="yes")
    with pytest.raises(st.StoreError, match="io_hints must be True or False"):
        SequenceSampler(s, io_hints=1)
    for bad in (-1, 17, 1.5, True, "1"):
        with pytest.raises(st.StoreError, match=r"hint_ahead must be an int in \[0, 16\]"):
            TransitionSampler(s, hint_ahead=bad)
    assert TransitionSampler(s, hint_ahead=0, pin_memory=False).sample(0)["obs"].shape == (512, 4, 84, 84)


def test_io_hints_pause_while_store_in_ram(synth, monkeypatch) -> None:
    _, s = synth
    # simulated per-thread counters (512-byte blocks read, major faults) advancing by `step` a call
    state = {"step": 0, "inblock": 0, "majflt": 0}

    def fake_io():
        state["inblock"] += state["step"]
        state["majflt"] += state["step"]
        return state["inblock"], state["majflt"]

    monkeypatch.setattr(ra, "thread_io", fake_io)
    monkeypatch.setattr(ra, "SKIP_AFTER", 200)
    ts = TransitionSampler(s, batch_size=64, seed=1, hint_ahead=0, pin_memory=False)
    ref = TransitionSampler(s, batch_size=64, seed=1, io_hints=False, pin_memory=False)
    h = ts._hints
    assert h is not None
    state["step"] = 1  # a trickle of reads (far below MISS_FRACTION of the pages hinted): still "in RAM"
    i = 0
    while not h.paused:  # hinting until a window of 200 hinted ranges read (almost) nothing
        ts.sample(i)
        i += 1
        assert i < 20
    assert i >= 3 and h.ranges_issued >= 200 and h.pauses == 1  # <= 64 ranges a batch
    n = h.ranges_issued
    for i in range(20, 26):
        assert _same(ts.sample(i), ref.sample(i))
    assert h.ranges_issued == n and h.paused  # nothing hinted while paused; the trickle does not resume
    state["step"] = 10**6  # pages evicted: the gather of the next batch takes many major faults...
    ts.sample(26)
    assert not h.paused and h.resumes == 1 and h.ranges_issued == n
    for i in range(27, 40):  # ... hints resume from the batch after it, and stay on while they read
        assert _same(ts.sample(i), ref.sample(i))
    assert h.ranges_issued > n + 10 * 50 and not h.paused and h.pauses == 1

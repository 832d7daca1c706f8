"""Dataset builder and store: splits on the Dopamine fixtures, interrupted builds, names, agreement."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from shared_paths import DQN_FIXTURES, SHARED

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import splits as sp
from workbench.data import store as st
from workbench.data.sampler import SequenceSampler, TransitionSampler

FIXTURES = DQN_FIXTURES
GAMES = ["Pong", "Breakout"]


@functools.cache
def _valid_slots(game: str, ckpt: int) -> np.ndarray:
    """Brute-force Dopamine validity (stack 4, horizon 3) from the raw arrays."""
    meta = dr.load_checkpoint_meta(FIXTURES / game / "1/replay_logs", ckpt)
    n, inv = meta.capacity, set(meta.invalid_range.tolist())
    return np.array([t for t in range(n) if t not in inv and not any(meta.terminal[(t - k) % n] for k in (1, 2, 3))])


def _store_starts_as_source(s: st.ReplayStore, game: str) -> set[tuple[int, int]]:
    gd = s.game(game)
    return {(c, sl) for _, c, sl in s.source_of(game, np.asarray(gd.starts))}


def _check_frames_match_source(s: st.ReplayStore, game: str, rows: np.ndarray) -> None:
    """Store transitions at ``rows`` equal read_transitions (Dopamine semantics) on their source."""
    src = s.source_of(game, rows)
    tr = s.transitions(game, rows)
    for ckpt in sorted({c for _, c, _ in src}):
        sel = np.array([i for i, (_, c, _) in enumerate(src) if c == ckpt])
        slots = np.array([src[i][2] for i in sel])
        ref = dr.read_transitions(FIXTURES / game / "1", ckpt, slots)
        np.testing.assert_array_equal(tr["state"][sel], np.moveaxis(ref["state"], -1, 1))
        np.testing.assert_array_equal(tr["next_state"][sel], np.moveaxis(ref["next_state"], -1, 1))
        np.testing.assert_array_equal(tr["reward"][sel], ref["reward"])
        np.testing.assert_array_equal(tr["terminal"][sel], ref["terminal"])
        np.testing.assert_array_equal(tr["action"][sel], ref["action"])


@pytest.fixture(scope="module")
def full_store(dopamine_store) -> st.ReplayStore:
    return st.ReplayStore(dopamine_store)


@pytest.mark.slow
def test_full_split_matches_dopamine_fixtures(full_store: st.ReplayStore) -> None:
    s = full_store
    assert s.games == tuple(GAMES)
    for g in GAMES:
        gd = s.game(g)
        assert gd.frames.shape == (4500, 84, 84) and gd.frames.dtype == np.uint8
        want = {(c, int(t)) for c in range(3) for t in _valid_slots(g, c)}
        assert _store_starts_as_source(s, g) == want
        for c in range(3):
            exp = np.load(FIXTURES / f"{g}_ckpt{c}_expected.npz")
            block = next(b for b in gd.blocks if b["checkpoint"] == c)
            rows = block["row_start"] + exp["indices"]  # cursor 0: chronological == slot order
            tr = s.transitions(g, rows)
            np.testing.assert_array_equal(tr["state"], np.moveaxis(exp["state"], -1, 1))
            np.testing.assert_array_equal(tr["reward"], exp["reward"])
            np.testing.assert_array_equal(tr["terminal"], exp["terminal"])
            np.testing.assert_array_equal(tr["action"], exp["action"])
            live = exp["terminal"] == 0
            np.testing.assert_array_equal(tr["next_state"][live], np.moveaxis(exp["next_state"], -1, 1)[live])
        # episode index: complete episodes end on a terminal; every terminal ends one episode
        eps = gd.episodes
        ends = eps[eps[:, 2] & st.EP_ENDS > 0, 1] - 1
        np.testing.assert_array_equal(np.sort(ends), np.flatnonzero(np.asarray(gd.terminal)))
        assert (eps[:, 0] < eps[:, 1]).all()


def test_manifest_contents(full_store: st.ReplayStore) -> None:
    m = full_store.manifest
    assert m["format_version"] == st.FORMAT_VERSION and m["seed"] == 0 and m["split"]["select"] == "all"
    b = m["games_info"]["Pong"]["blocks"][1]
    files = b["source_files_sha256"]
    import hashlib

    for name in ("$store$_observation_ckpt.1.gz", "$store$_terminal_ckpt.1.gz", "add_count_ckpt.1.gz"):
        assert files[name] == hashlib.sha256((FIXTURES / "Pong/1/replay_logs" / name).read_bytes()).hexdigest()
    assert not (full_store.path / ".build").exists()


@pytest.mark.parametrize(
    "split,ckpts",
    [(sp.Split("first", k=1), [0]), (sp.Split("first", ckpt_fraction=0.67), [0, 1]), (sp.Split("last", k=1), [2]),
     (sp.split_preset("expert"), [2])],
)
def test_checkpoint_splits(tmp_path: Path, split: sp.Split, ckpts: list[int]) -> None:
    out = bd.build_store(FIXTURES, tmp_path / "s", ["Breakout"], [1], split, progress=False)
    s = st.ReplayStore(out)
    want = {(c, int(t)) for c in ckpts for t in _valid_slots("Breakout", c)}
    assert _store_starts_as_source(s, "Breakout") == want
    assert [b["checkpoint"] for b in s.game("Breakout").blocks] == ckpts


@pytest.mark.slow
@pytest.mark.parametrize(
    "split,games", [(sp.Split("all", sample_fraction=0.1), GAMES), (sp.Split("last", k=1, sample_count=150), ["Pong"])]
)
def test_uniform_subsample(tmp_path: Path, split: sp.Split, games: list[str]) -> None:
    out = bd.build_store(FIXTURES, tmp_path / "a", games, [1], split, seed=3, progress=False)
    s = st.ReplayStore(out)
    for g in games:
        ckpts = [0, 1, 2] if split.select == "all" else [2]
        valid = {(c, int(t)) for c in ckpts for t in _valid_slots(g, c)}
        got = _store_starts_as_source(s, g)
        n = len(s.game(g).starts)
        want = split.sample_count if split.sample_count else round(0.1 * len(valid))
        assert n == want == len(got)  # without replacement: no duplicates
        assert got <= valid
        # stacks, n-step windows and next stacks of every selected start survive the subsampling
        _check_frames_match_source(s, g, np.asarray(s.game(g).starts))
        # the subsample stores fewer rows than the checkpoints hold
        assert s.rows(g) < 1500 * len(ckpts)
    # seeded: same seed -> same selection, other seed -> different one
    same = st.ReplayStore(bd.build_store(FIXTURES, tmp_path / "b", ["Pong"], [1], split, seed=3, progress=False))
    other = st.ReplayStore(bd.build_store(FIXTURES, tmp_path / "c", ["Pong"], [1], split, seed=4, progress=False))
    assert _store_starts_as_source(same, "Pong") == _store_starts_as_source(s, "Pong")
    assert _store_starts_as_source(other, "Pong") != _store_starts_as_source(s, "Pong")
    assert s.manifest["split"]["sample_count"] == split.sample_count


def _all_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.npy"))}


def test_interrupted_build_leaves_no_manifest_and_resumes(tmp_path: Path, monkeypatch) -> None:
    split = sp.Split("all", sample_fraction=0.5)
    clean = bd.build_store(FIXTURES, tmp_path / "clean", GAMES, [1], split, seed=1, progress=False)
    calls = {"n": 0}
    real_copy = bd._copy_frames

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # die in the middle of the second game
            raise KeyboardInterrupt("simulated kill")
        return real_copy(*a, **k)

    monkeypatch.setattr(bd, "_copy_frames", failing)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        bd.build_store(FIXTURES, out, GAMES, [1], split, seed=1, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(st.StoreError, match="no manifest.json.*interrupted"):
        st.ReplayStore(out)
    # resume: only the 3 unfinished checkpoints are converted again
    calls["n"] = -100
    bd.build_store(FIXTURES, out, GAMES, [1], split, seed=1, progress=False)
    assert calls["n"] == -100 + 3
    assert _all_files(out) == _all_files(clean)
    a, b = st.ReplayStore(out).manifest, st.ReplayStore(clean).manifest
    a.pop("created"), b.pop("created")
    assert a == b
    # different arguments over an interrupted build restart it from scratch
    monkeypatch.setattr(bd, "_copy_frames", real_copy)
    (out / "manifest.json").unlink()
    bd.build_store(FIXTURES, out, GAMES, [1], sp.Split("first", k=1), seed=1, progress=False)
    assert [b["checkpoint"] for b in st.ReplayStore(out).game("Pong").blocks] == [0]


def test_killed_subprocess_build(tmp_path: Path) -> None:
    """A real kill (SIGKILL mid-build) leaves no manifest; the rerun completes."""
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    code = (
        "import time, workbench.data.build as bd\n"
        "real = bd._copy_frames\n"
        "def slow(*a, **k):\n    r = real(*a, **k); time.sleep(0.5); return r\n"
        "bd._copy_frames = slow\n"
        f"bd.build_store({str(FIXTURES)!r}, {str(out)!r}, ['Pong', 'Breakout'], [1], 'near_optimal', progress=False)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline and not list(out.glob(".build/done/*.json")):
        time.sleep(0.05)  # kill once the first checkpoint is done: mid-build
    p.kill()
    p.wait()
    assert not (out / "manifest.json").exists()
    bd.build_store(FIXTURES, out, GAMES, [1], "near_optimal", progress=False)
    s = st.ReplayStore(out)
    assert s.rows("Pong") == 4500
    assert len(s.game("Breakout").starts) == sum(len(_valid_slots("Breakout", c)) for c in range(3))


def test_wrong_names_list_what_exists(tmp_path: Path, full_store: st.ReplayStore) -> None:
    with pytest.raises(dr.DQNReplayError, match=r"unknown game 'Asterix'.*\['Breakout', 'Pong'\]"):
        bd.build_store(FIXTURES, tmp_path / "x", ["Asterix"], [1], progress=False)
    with pytest.raises(dr.DQNReplayError, match=r"unknown run '3'.*\['1'\]"):
        bd.build_store(FIXTURES, tmp_path / "x", ["Pong"], [3], progress=False)
    with pytest.raises(st.StoreError, match="asks for 5 checkpoints but the run has 3"):
        bd.build_store(FIXTURES, tmp_path / "x", ["Pong"], [1], sp.Split("first", k=5), progress=False)
    with pytest.raises(st.StoreError, match="invalid split 'tiny'.*first:K.*expert"):
        bd.build_store(FIXTURES, tmp_path / "x", ["Pong"], [1], "tiny", progress=False)
    with pytest.raises(st.StoreError, match="select must be one of"):
        sp.Split("middle")
    with pytest.raises(st.StoreError, match=r"game 'Qbert' is not in store .*\['Pong', 'Breakout'\]"):
        full_store.game("Qbert")
    with pytest.raises(st.StoreError, match=r"games must be .*\['Pong', 'Breakout'\]"):
        TransitionSampler(full_store, games=[], batch_size=4)


def test_sampler_agrees_with_reader(full_store: st.ReplayStore) -> None:
    ts = TransitionSampler(full_store, batch_size=64, games_per_batch=8, seed=5, pin_memory=False)
    for i in range(3):
        gid, rows = ts.draw_rows(i)
        batch = ts.sample(i)
        for g in np.unique(gid):
            sel = np.flatnonzero(gid == g)
            game = ts.games[g]
            src = full_store.source_of(game, rows[sel])
            for ckpt in {c for _, c, _ in src}:
                k = np.array([j for j, (_, c, _) in enumerate(src) if c == ckpt])
                ref = dr.read_transitions(FIXTURES / game / "1", ckpt, np.array([src[j][2] for j in k]))
                b = sel[k]
                np.testing.assert_array_equal(batch["obs"][b].numpy(), np.moveaxis(ref["state"], -1, 1))
                np.testing.assert_array_equal(batch["reward"][b].numpy(), ref["reward"])
                np.testing.assert_array_equal(batch["terminal"][b].numpy(), ref["terminal"].astype(np.float32))
                np.testing.assert_array_equal(batch["action"][b].numpy(), ref["action"])
                live = ref["terminal"] == 0
                np.testing.assert_array_equal(
                    batch["next_obs"][b][live].numpy(), np.moveaxis(ref["next_state"], -1, 1)[live]
                )


# ----------------------------------------------------------------------------------------------
# The public dataset's layout: one logged ring (update horizon 1) dumped at cursor capacity - 1.
# The truth comes from ../shared/fixtures/dqn_replay_logged only: the stream of every row Dopamine
# added, and the stream row embedded in every real frame -- never from the code under test.

LOGGED = SHARED / "fixtures" / "dqn_replay_logged"
LOGGED_CKPTS = 5


def _raw(ckpt: int, key: str) -> np.ndarray:
    """One array of a logged checkpoint, read with nothing but gzip and numpy."""
    import gzip

    store_key = key in ("observation", "action", "reward", "terminal")
    name = f"$store$_{key}_ckpt.{ckpt}.gz" if store_key else f"{key}_ckpt.{ckpt}.gz"
    with gzip.open(LOGGED / "Breakout/1/replay_logs" / name) as f:
        return np.load(f, allow_pickle=False)


def _frame_ids(frames: np.ndarray) -> np.ndarray:
    """Stream row + 1 embedded in each frame's first 4 pixels (0 for padding frames)."""
    f = np.asarray(frames)[..., 0, :4].astype(np.int64)
    return f[..., 0] | f[..., 1] << 8 | f[..., 2] << 16 | f[..., 3] << 24


@functools.cache
def _truth() -> dict:
    """The true stream: per-row action/reward/terminal/padding, the frame of every row, the
    stream rows each checkpoint holds, and the stream rows of Dopamine's correct 3-step starts."""
    s = np.load(LOGGED / "Breakout_stream.npz")
    rows = len(s["action"])
    frames = np.zeros((rows, 84, 84), np.uint8)  # padding rows stay all zero
    seen = np.zeros(rows, bool)
    span, dopamine_ok = {}, {}
    dop = np.load(LOGGED / "Breakout_dopamine_n3.npz")
    for c in range(LOGGED_CKPTS):
        obs, add, cap = _raw(c, "observation"), int(_raw(c, "add_count")), len(_raw(c, "terminal"))
        # the written rows in the order Dopamine added them (Dopamine's own meaning of add_count)
        order = np.roll(np.arange(cap), -(add % cap)) if add >= cap else np.arange(add)
        ids = _frame_ids(obs[order])
        real = np.flatnonzero(ids)
        first = int(ids[real[0]] - 1 - real[0])  # consecutive positions are consecutive stream rows
        assert (ids[real] - 1 == first + real).all(), "fixture: a checkpoint's rows are not one piece of the stream"
        span[c] = (first, first + len(order) - 1)
        r = ids[real] - 1
        assert not (seen[r] & (frames[r] != obs[order][real]).any(axis=(1, 2))).any()
        frames[r], seen[r] = obs[order][real], True
        idx, agrees = dop[f"ckpt{c}_indices"], dop[f"ckpt{c}_agrees"].astype(bool)
        dopamine_ok[c] = set((_frame_ids(obs[idx[agrees]]) - 1).tolist())
    assert (seen | s["padding"].astype(bool)).sum() >= rows - 1  # every row but row 1999 (see README) is in a file
    return {
        "action": s["action"].astype(np.int64), "reward": s["reward"].astype(np.float64),
        "terminal": s["terminal"].astype(bool), "padding": s["padding"].astype(bool), "frames": frames, "span": span,
        "dopamine_ok": dopamine_ok, "rows": rows,
    }


def _ckpt_end(g: np.ndarray) -> np.ndarray:
    """Last stream row of the checkpoint holding stream row g."""
    T = _truth()
    end = np.full(len(g), -1, dtype=np.int64)
    for lo, hi in T["span"].values():
        end[(g >= lo) & (g <= hi)] = hi
    assert (end >= 0).all()
    return end


def _check_transition_batch(b: dict, n: int, gamma: float) -> tuple[np.ndarray, int]:
    """(stream rows of the batch's starts, how many samples differ from the truth)."""
    T = _truth()
    obs, nxt = b["obs"].numpy(), b["next_obs"].numpy()
    g = _frame_ids(obs[:, -1]) - 1  # a start is never a padding row: its own frame names it
    assert (g >= 0).all()
    win = g[:, None] + np.arange(n)[None, :]
    assert win.max() < T["rows"]
    term = T["terminal"][win]
    is_term = term.any(axis=1)
    length = np.where(is_term, term.argmax(axis=1) + 1, n)
    inside = np.arange(n)[None, :] < length[:, None]
    ret = np.where(inside, gamma ** np.arange(n)[None, :] * T["reward"][win], 0).sum(axis=1)

    def stack(last: np.ndarray) -> np.ndarray:
        return T["frames"][last[:, None] + np.arange(-3, 1)[None, :]]

    ok = (obs == stack(g)).all(axis=(1, 2, 3))
    ok &= (nxt == stack(g + length)).all(axis=(1, 2, 3))
    ok &= b["action"].numpy() == T["action"][g]
    ok &= np.abs(b["reward"].numpy() - ret) < 1e-6
    ok &= b["terminal"].numpy().astype(bool) == is_term
    ok &= np.isclose(b["discount"].numpy(), np.where(is_term, 0.0, gamma**n), rtol=0, atol=1e-7)
    ok &= _ckpt_end(g) >= g + length  # nothing read past the checkpoint's last row
    return g, int((~ok).sum())


def _check_sequence_batch(b: dict, L: int, starts: np.ndarray) -> tuple[np.ndarray, int]:
    """``starts``: stream rows of the store's transition starts (each verified against the truth
    by the transition check): a segment's steps are real while they are consecutive starts."""
    T = _truth()
    obs, mask = b["obs"].numpy(), b["mask"].numpy()
    g = _frame_ids(obs[:, 0]) - 1
    assert (g >= 0).all()
    rows = g[:, None] + np.arange(L)[None, :]
    inside = rows <= _ckpt_end(g)[:, None]  # the checkpoint's rows (no reading into the next one)
    inside &= np.cumprod(np.isin(rows, starts), axis=1).astype(bool)  # the split's consecutive starts
    r = np.minimum(rows, T["rows"] - 1)
    t = T["terminal"][r] & inside
    truth_mask = inside & (np.cumsum(t, axis=1) - t == 0)  # real until the step after a terminal
    want_obs = np.where(truth_mask[..., None, None], T["frames"][r], 0)
    ok = (mask == truth_mask).all(axis=1)
    ok &= (obs == want_obs).all(axis=(1, 2, 3))
    ok &= (b["action"].numpy() == np.where(truth_mask, T["action"][r], 0)).all(axis=1)
    ok &= (b["reward"].numpy() == np.where(truth_mask, T["reward"][r], 0)).all(axis=1)
    ok &= (b["terminal"].numpy().astype(bool) == (truth_mask & T["terminal"][r])).all(axis=1)
    return g, int((~ok).sum())


def _draw_until_every_start(sampler, n_starts: int, check, max_batches: int = 400) -> dict:
    seen, checked, wrong, i = set(), 0, 0, 0
    while len(seen) < n_starts:
        assert i < max_batches, f"{len(seen)} of {n_starts} starts drawn after {i} batches"
        g, bad = check(sampler.sample(i))
        seen.update(g.tolist())
        checked, wrong, i = checked + len(g), wrong + bad, i + 1
    return {"starts": seen, "checked": checked, "wrong": wrong, "batches": i}


# split, checkpoints it chooses among 0..4 (4 is the final partial dump)
LOGGED_SPLITS = [
    ("near_optimal", [0, 1, 2, 3, 4]), ("all", [0, 1, 2, 3, 4]), ("first:2", [0, 1]), ("last:0.4", [3, 4]),
    ("sub_optimal", [0]), ("expert", [4]), (sp.Split("last", k=3), [2, 3, 4]), ("fraction:0.3", [0, 1, 2, 3, 4]),
    ("n:300", [0, 1, 2, 3, 4]), ("jowa_10pct", [0, 1, 2, 3, 4]), ("finetune_1pct", [0, 1, 2, 3, 4]),
    (sp.Split("first", k=3, sample_count=100), [0, 1, 2]),
]


def logged_split_report(
    split, ckpts: list[int], out: Path, n_build: int = 3, n_read: int = 3, gamma: float = 0.99
) -> dict:
    """Build the logged fixture with ``split``; draw transition and sequence batches until every
    start was drawn; count samples that differ from the stream's truth, and Dopamine's correct
    starts (of the chosen checkpoints) the store keeps."""
    s = st.ReplayStore(bd.build_store(LOGGED, out, ["Breakout"], [1], split, n_step=n_build, progress=False))
    n_starts = len(s.game("Breakout").starts)
    ts = TransitionSampler(
        s, batch_size=256, n_step=n_read, gamma=gamma, games_per_batch=64, seed=1, pin_memory=False, prefetch=0
    )
    tr = _draw_until_every_start(ts, n_starts, lambda b: _check_transition_batch(b, n_read, gamma))
    sq = SequenceSampler(s, batch_size=128, seq_len=8, seed=2, pin_memory=False, prefetch=0)
    starts = np.array(sorted(tr["starts"]))
    seq = _draw_until_every_start(sq, n_starts, lambda b: _check_sequence_batch(b, 8, starts))
    dop = set().union(*(_truth()["dopamine_ok"][c] for c in ckpts))
    return {
        "split": str(split), "store_starts": n_starts, "transition_checked": tr["checked"],
        "transition_wrong": tr["wrong"], "sequence_checked": seq["checked"], "sequence_wrong": seq["wrong"],
        "starts": tr["starts"], "dopamine_correct": len(dop), "dopamine_correct_kept": len(tr["starts"] & dop),
        "seq_starts": seq["starts"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("split,ckpts", LOGGED_SPLITS, ids=[str(s) for s, _ in LOGGED_SPLITS])
def test_logged_layout_every_sample_is_exact(tmp_path: Path, split, ckpts: list[int]) -> None:
    r = logged_split_report(split, ckpts, tmp_path / "s")
    assert r["transition_wrong"] == 0 and r["sequence_wrong"] == 0
    assert r["starts"] == r["seq_starts"] and len(r["starts"]) == r["store_starts"]  # every start drawn, no other
    in_ckpts = set().union(*(range(lo, hi + 1) for c, (lo, hi) in _truth()["span"].items() if c in ckpts))
    assert r["starts"] <= in_ckpts  # only the split's checkpoints
    parsed = sp.parse_split(split)
    if not parsed.subsampled:
        assert r["dopamine_correct_kept"] >= 0.97 * r["dopamine_correct"]
    else:  # a uniform sample of the starts the same checkpoints give unsampled (checked exact by the cases above)
        whole = sp.Split(parsed.select, k=parsed.k, ckpt_fraction=parsed.ckpt_fraction)
        ps = st.ReplayStore(bd.build_store(LOGGED, tmp_path / "pool", ["Breakout"], [1], whole, progress=False))
        pool_gd = ps.game("Breakout")
        pool = set((_frame_ids(np.asarray(pool_gd.frames)[np.asarray(pool_gd.starts)]) - 1).tolist())
        assert r["starts"] <= pool
        assert r["store_starts"] == (parsed.sample_count or round(parsed.sample_fraction * len(pool)))


@pytest.mark.slow
@pytest.mark.parametrize("n_build,n_read", [(3, 1), (5, 5), (1, 1)])
def test_logged_layout_other_horizons(tmp_path: Path, n_build: int, n_read: int) -> None:
    """The reader's horizon, not the writer's (1): longer windows must not reach the stale slot."""
    r = logged_split_report(
        "near_optimal", list(range(LOGGED_CKPTS)), tmp_path / "s", n_build=n_build, n_read=n_read, gamma=0.9
    )
    assert r["transition_wrong"] == 0 and r["sequence_wrong"] == 0
    if n_build <= 3:  # a shorter horizon keeps at least every start a 3-step reader gets right
        assert r["dopamine_correct_kept"] == r["dopamine_correct"]


def test_logged_layout_impossible_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(st.StoreError, match="asks for 5000 transitions but the chosen checkpoints hold"):
        bd.build_store(LOGGED, tmp_path / "s", ["Breakout"], [1], "finetune_5k_expert", progress=False)


def test_damaged_store_gathers_raise(tmp_path: Path) -> None:
    """Bound checks: a start whose rows run past its segment raises instead of reading a neighbour."""
    out = bd.build_store(LOGGED, tmp_path / "s", ["Breakout"], [1], "first:1", progress=False)
    seg = np.load(out / "Breakout/start_seg_end.npy")
    np.save(out / "Breakout/start_seg_end.npy", seg - 1)  # as if the last row of every segment were missing
    s = st.ReplayStore(out)
    last = int(np.argmax(s.game("Breakout").starts))
    with pytest.raises(st.StoreError, match="need rows p-3..p\\+3 but their contiguous rows end"):
        s.transitions("Breakout", s.game("Breakout").starts[last : last + 1])
    ts = TransitionSampler(s, batch_size=512, games_per_batch=512, seed=0, pin_memory=False, prefetch=0)
    with pytest.raises(st.StoreError, match="contiguous rows end"):
        for i in range(50):
            ts.sample(i)

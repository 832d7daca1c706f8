"""Dataset builder and store: splits on the Dopamine fixtures, interrupted builds, names, agreement."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from shared_paths import DQN_FIXTURES
from workbench.data import dqn_replay as dr
from workbench.data import store as st
from workbench.data.sampler import TransitionSampler

FIXTURES = DQN_FIXTURES
GAMES = ["Pong", "Breakout"]


@functools.lru_cache(maxsize=None)
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
def full_store(tmp_path_factory) -> st.ReplayStore:
    out = tmp_path_factory.mktemp("full") / "store"
    st.build_store(FIXTURES, out, GAMES, [1], "near_optimal", progress=False)
    return st.ReplayStore(out)


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
    [(st.Split("first", k=1), [0]), (st.Split("first", ckpt_fraction=0.67), [0, 1]), (st.Split("last", k=1), [2]),
     (st.split_preset("expert"), [2])],
)
def test_checkpoint_splits(tmp_path: Path, split: st.Split, ckpts: list[int]) -> None:
    out = st.build_store(FIXTURES, tmp_path / "s", ["Breakout"], [1], split, progress=False)
    s = st.ReplayStore(out)
    want = {(c, int(t)) for c in ckpts for t in _valid_slots("Breakout", c)}
    assert _store_starts_as_source(s, "Breakout") == want
    assert [b["checkpoint"] for b in s.game("Breakout").blocks] == ckpts


@pytest.mark.parametrize("split,games", [(st.Split("all", sample_fraction=0.1), GAMES), (st.Split("last", k=1, sample_count=150), ["Pong"])])
def test_uniform_subsample(tmp_path: Path, split: st.Split, games: list[str]) -> None:
    out = st.build_store(FIXTURES, tmp_path / "a", games, [1], split, seed=3, progress=False)
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
    same = st.ReplayStore(st.build_store(FIXTURES, tmp_path / "b", ["Pong"], [1], split, seed=3, progress=False))
    other = st.ReplayStore(st.build_store(FIXTURES, tmp_path / "c", ["Pong"], [1], split, seed=4, progress=False))
    assert _store_starts_as_source(same, "Pong") == _store_starts_as_source(s, "Pong")
    assert _store_starts_as_source(other, "Pong") != _store_starts_as_source(s, "Pong")
    assert s.manifest["split"]["sample_count"] == split.sample_count


def _all_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.npy"))}


def test_interrupted_build_leaves_no_manifest_and_resumes(tmp_path: Path, monkeypatch) -> None:
    split = st.Split("all", sample_fraction=0.5)
    clean = st.build_store(FIXTURES, tmp_path / "clean", GAMES, [1], split, seed=1, progress=False)
    calls = {"n": 0}
    real_copy = st._copy_frames

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # die in the middle of the second game
            raise KeyboardInterrupt("simulated kill")
        return real_copy(*a, **k)

    monkeypatch.setattr(st, "_copy_frames", failing)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        st.build_store(FIXTURES, out, GAMES, [1], split, seed=1, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(st.StoreError, match="no manifest.json.*interrupted"):
        st.ReplayStore(out)
    # resume: only the 3 unfinished checkpoints are converted again
    calls["n"] = -100
    st.build_store(FIXTURES, out, GAMES, [1], split, seed=1, progress=False)
    assert calls["n"] == -100 + 3
    assert _all_files(out) == _all_files(clean)
    a, b = st.ReplayStore(out).manifest, st.ReplayStore(clean).manifest
    a.pop("created"), b.pop("created")
    assert a == b
    # different arguments over an interrupted build restart it from scratch
    monkeypatch.setattr(st, "_copy_frames", real_copy)
    (out / "manifest.json").unlink()
    st.build_store(FIXTURES, out, GAMES, [1], st.Split("first", k=1), seed=1, progress=False)
    assert [b["checkpoint"] for b in st.ReplayStore(out).game("Pong").blocks] == [0]


def test_killed_subprocess_build(tmp_path: Path) -> None:
    """A real kill (SIGKILL mid-build) leaves no manifest; the rerun completes."""
    import subprocess
    import sys
    import time

    out = tmp_path / "s"
    code = (
        "import time, workbench.data.store as st\n"
        "real = st._copy_frames\n"
        "def slow(*a, **k):\n    r = real(*a, **k); time.sleep(0.5); return r\n"
        "st._copy_frames = slow\n"
        f"st.build_store({str(FIXTURES)!r}, {str(out)!r}, ['Pong', 'Breakout'], [1], 'near_optimal', progress=False)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline and not list(out.glob(".build/done/*.json")):
        time.sleep(0.05)  # kill once the first checkpoint is done: mid-build
    p.kill()
    p.wait()
    assert not (out / "manifest.json").exists()
    st.build_store(FIXTURES, out, GAMES, [1], "near_optimal", progress=False)
    s = st.ReplayStore(out)
    assert s.rows("Pong") == 4500 and len(s.game("Breakout").starts) == sum(len(_valid_slots("Breakout", c)) for c in range(3))


def test_wrong_names_list_what_exists(tmp_path: Path, full_store: st.ReplayStore) -> None:
    with pytest.raises(dr.DQNReplayError, match=r"unknown game 'Asterix'.*\['Breakout', 'Pong'\]"):
        st.build_store(FIXTURES, tmp_path / "x", ["Asterix"], [1], progress=False)
    with pytest.raises(dr.DQNReplayError, match=r"unknown run '3'.*\['1'\]"):
        st.build_store(FIXTURES, tmp_path / "x", ["Pong"], [3], progress=False)
    with pytest.raises(st.StoreError, match="asks for 5 checkpoints but the run has 3"):
        st.build_store(FIXTURES, tmp_path / "x", ["Pong"], [1], st.Split("first", k=5), progress=False)
    with pytest.raises(st.StoreError, match="invalid split 'tiny'.*first:K.*expert"):
        st.build_store(FIXTURES, tmp_path / "x", ["Pong"], [1], "tiny", progress=False)
    with pytest.raises(st.StoreError, match="select must be one of"):
        st.Split("middle")
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
                np.testing.assert_array_equal(batch["next_obs"][b][live].numpy(), np.moveaxis(ref["next_state"], -1, 1)[live])

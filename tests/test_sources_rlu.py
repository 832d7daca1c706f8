"""RL Unplugged Atari -> DQN-Replay layout -> store: every transition against the written stream.

The data is written with the libraries RL Unplugged and TFDS use: TensorFlow's gzip
``TFRecordWriter`` of ``tf.train.Example`` episodes with the feature names TFDS's builder parses
(``tensorflow_datasets/rl_unplugged/atari_utils.py``), frames through ``tf.io.encode_png``; and
TFDS's own ``rlu_atari_checkpoints_ordered`` builder, pointed at those files, prepares the
``tfds`` form. The reader itself needs neither library (both forms are read with protobuf and
OpenCV); these tests need ``pip install -e ".[rlu]"`` to write the data and are skipped without it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.data import build as bd
from workbench.data import dqn_replay as dr
from workbench.data import store as st
from workbench.data.sampler import SequenceSampler, TransitionSampler
from workbench.data.sources import SourceError
from workbench.data.sources import convert as cv
from workbench.data.sources import tfrecord as tfr
from workbench.data.sources.rlu_source import RluSource
from workbench.games import minimal_action_set

# Importing TensorFlow and preparing with TFDS take seconds: the slow loop.
pytestmark = pytest.mark.slow

GAMMA = 0.99
SPLITS = ["all", "first:2", "last:0.5", "fraction:0.5", "fraction:0.5:episodes", "n:40", "n:30:episodes"]
# (game, run) -> shards (checkpoints) written; run 2 of Pong lacks its last, as some public runs lack checkpoint 50
PLAN = {("Pong", "1"): (0, 1, 2), ("Pong", "2"): (0, 1), ("Breakout", "1"): (0, 1), ("Breakout", "2"): (0, 1)}
SHARDS = {"Pong": 3, "Breakout": 2}  # files per run: {Game}/run_{R}-{ckpt:05d}-of-{SHARDS:05d}


def _tf():
    pytest.importorskip("tensorflow_datasets", reason="the rlu extra is not installed: pip install -e '.[rlu]'")
    return pytest.importorskip("tensorflow", reason="the rlu extra is not installed: pip install -e '.[rlu]'")


def _episode_example(tf, ckpt: int, eid: int, ep: dict) -> bytes:
    pngs = [tf.io.encode_png(f[:, :, None]).numpy() for f in ep["frames"]]
    T = len(ep["action"])
    discounts = np.ones(T, np.float32)
    if ep["game_over"]:
        discounts[-1] = 0.0
    reward = ep["reward"].astype(np.float32)

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))

    feature = {
        "checkpoint_idx": ints([ckpt]), "episode_idx": ints([eid]),
        "episode_return": floats([reward.sum()]), "clipped_episode_return": floats([np.clip(reward, -1, 1).sum()]),
        "observations": tf.train.Feature(bytes_list=tf.train.BytesList(value=pngs)),
        "actions": ints(ep["action"]), "unclipped_rewards": floats(reward),
        "clipped_rewards": floats(np.clip(reward, -1, 1)), "discounts": floats(discounts),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """RL Unplugged's own layout: {Game}/run_{R}-{ckpt:05d}-of-{n:05d}, gzip TFRecord, one episode per record."""
    tf = _tf()
    root = tmp_path_factory.mktemp("rlu") / "atari_episodes_ordered"
    rng = np.random.default_rng(7)
    stream: dict[tuple[str, str], list[dict]] = {}
    for (game, run), ckpts in PLAN.items():
        (root / game).mkdir(parents=True, exist_ok=True)
        eps = stream[(game, run)] = []
        for c in ckpts:
            n_eps = int(rng.integers(2, 5))
            mine = []
            for eid in range(n_eps):
                T = 1 if (c == 0 and eid == 0) else int(rng.integers(4, 30))  # a one-step game over
                ep = {
                    "checkpoint": c, "episode_id": eid,
                    "frames": rng.integers(0, 256, (T, 84, 84), dtype=np.uint8),
                    "action": rng.integers(0, len(minimal_action_set(game)), T),
                    "reward": rng.choice([-3.0, -1.0, 0.0, 0.0, 0.0, 1.0, 4.0], T),
                    "game_over": bool(T == 1 or rng.random() < 0.6),
                }
                mine.append(ep)
            eps += mine
            # records of one shard written out of episode order: the reader orders them by episode id
            name = f"run_{run}-{c:05d}-of-{SHARDS[game]:05d}"
            with tf.io.TFRecordWriter(str(root / game / name), options="GZIP") as w:
                for ep in mine[::-1]:
                    w.write(_episode_example(tf, c, ep["episode_id"], ep))
    return {"root": root, "stream": stream}


@pytest.fixture(scope="module")
def prepared(written, tmp_path_factory):
    """TFDS's rlu_atari_checkpoints_ordered builder prepares its form from the written files
    (complete runs only: TFDS cannot prepare a run with a missing shard)."""
    _tf()
    from tensorflow_datasets.rl_unplugged import atari_utils
    from tensorflow_datasets.rl_unplugged.rlu_atari_checkpoints_ordered import rlu_atari_checkpoints_ordered as rco

    data_dir = tmp_path_factory.mktemp("tfds")
    configs = [atari_utils.BuilderConfig(name=f"{g}_run_{r}", game=g, run=int(r))
               for (g, r), ck in PLAN.items() if len(ck) == SHARDS[g]]
    local = type("RluAtariCheckpointsOrdered", (rco.RluAtariCheckpointsOrdered,), {
        "name": "rlu_atari_checkpoints_ordered", "BUILDER_CONFIGS": configs,
        "_INPUT_FILE_PREFIX": str(written["root"]),
        "num_shards": lambda self: SHARDS[self.builder_config.game],
    }, skip_registration=True)
    for cfg in configs:
        local(data_dir=str(data_dir / "prepared"), config=cfg.name).download_and_prepare(
            download_dir=str(data_dir / "dl"))
    return data_dir / "prepared"


def _expected_episodes(written, key, last_step="decision") -> list[dict]:
    out = []
    for ep in sorted(written["stream"][key], key=lambda e: (e["checkpoint"], e["episode_id"])):
        keep = len(ep["action"]) - (1 if (ep["game_over"] and last_step == "terminal-frame") else 0)
        if keep:
            out.append({**ep, "keep": keep})
    return out


@pytest.mark.parametrize("last_step", ["decision", "terminal-frame"])
def test_reader_gives_the_written_episodes_in_order(written, prepared, last_step):
    forms = {"episodes": written["root"], "tfds": prepared}
    for form, path in forms.items():
        src = RluSource(path, last_step=last_step)
        assert src.layout == form
        for game in src.games():
            got = list(src.episodes(game))
            want = [e for r in src.runs(game) for e in _expected_episodes(written, (game, r), last_step)]
            assert [(e.run, e.checkpoint, e.provenance["episode_id"]) for e in got] == \
                [(r, w["checkpoint"], w["episode_id"]) for r in src.runs(game)
                 for w in _expected_episodes(written, (game, r), last_step)]
            for e, w in zip(got, want):
                k = w["keep"]
                np.testing.assert_array_equal(e.action, w["action"][:k])
                np.testing.assert_array_equal(e.reward, w["reward"][:k].astype(np.float32))
                np.testing.assert_array_equal(e.frames(0, k), w["frames"][:k])
                np.testing.assert_array_equal(e.frames(1, min(3, k)), w["frames"][1:min(3, k)])
                assert e.ended_by_game_over == w["game_over"]
                assert bool(e.truncated[-1]) == (not w["game_over"])
    # a Pong run with a missing shard: listed in the provenance, its other checkpoints read
    prov = RluSource(written["root"]).provenance()
    assert [r["missing_shards"] for r in prov["runs"] if (r["game"], r["run"]) == ("Pong", "2")] == [[2]]
    assert prov["crc_checked"] is tfr.crc_checked()


def test_example_decoder_equals_tensorflows(written):
    tf = _tf()
    for _, data in tfr.records(written["root"] / "Pong" / f"run_1-00001-of-{SHARDS['Pong']:05d}"):
        ours = tfr.decode_example(data)
        theirs = tf.train.Example.FromString(data).features.feature
        assert set(ours) == set(theirs.keys())
        for k, v in theirs.items():
            kind = v.WhichOneof("kind")
            ref = list(getattr(v, kind).value)
            if kind == "bytes_list":
                assert ours[k] == ref
            else:
                np.testing.assert_array_equal(ours[k], np.asarray(ref, dtype=ours[k].dtype))


def _rows(written, game, last_step="decision") -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """(run, checkpoint) -> the DQN-Replay rows it must hold: per episode 3 zero rows, then its steps."""
    out: dict[tuple[str, int], dict[str, list]] = {}
    number = 0
    for (g, run) in PLAN:
        if g != game:
            continue
        for ep in _expected_episodes(written, (g, run), last_step):
            number += 1
            k = ep["keep"]
            d = out.setdefault((run, ep["checkpoint"]), {"frames": [], "action": [], "reward": [], "terminal": [],
                                                          "episode": []})
            d["frames"] += [np.zeros((3, 84, 84), np.uint8), ep["frames"][:k]]
            d["action"] += [0] * 3 + list(ep["action"][:k])
            d["reward"] += [0.0] * 3 + list(np.clip(ep["reward"][:k], -1, 1))
            d["terminal"] += [0] * 3 + [0] * (k - 1) + [1]
            d["episode"] += [-1] * 3 + [number] * k
    return {key: {"frames": np.concatenate(d["frames"]), "action": np.asarray(d["action"]),
                  "reward": np.asarray(d["reward"], np.float32), "terminal": np.asarray(d["terminal"], np.uint8),
                  "episode": np.asarray(d["episode"])} for key, d in out.items()}


@pytest.fixture(scope="module")
def converted(written, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "root"
    info = cv.convert(cv.open_source("rlu", written["root"]), out, progress=False)
    return out, info


def test_runs_and_checkpoint_ids_are_kept(written, converted):
    out, info = converted
    for game in ("Pong", "Breakout"):
        gi = info["games"][game]
        assert gi["complete"] and gi["checkpoint_ids"] == "source"
        rows = _rows(written, game)
        for (g, run), ckpts in PLAN.items():
            if g != game:
                continue
            rl = out / game / run / "replay_logs"
            assert list(dr.list_checkpoints(rl)) == list(ckpts)  # Pong run 2: 0 and 1, as written
            assert gi["runs"][run]["checkpoints"] == list(ckpts)
            for c in ckpts:
                a = dr.load_checkpoint(rl, c)
                exp = rows[(run, c)]
                np.testing.assert_array_equal(a["observation"], exp["frames"])
                np.testing.assert_array_equal(a["action"], exp["action"])
                np.testing.assert_array_equal(a["reward"], exp["reward"])
                np.testing.assert_array_equal(a["terminal"], exp["terminal"])
                with np.load(out / game / run / "source" / f"checkpoint_{c}.npz") as z:
                    real = exp["episode"] >= 0
                    last = np.flatnonzero(exp["terminal"])
                    eps = _expected_episodes(written, (game, run))
                    mine = [e for e in eps if e["checkpoint"] == c]
                    np.testing.assert_array_equal(z["raw_reward"][real],
                                                  np.concatenate([e["reward"].astype(np.float32) for e in mine]))
                    np.testing.assert_array_equal(z["truncated"][last], [not e["game_over"] for e in mine])


@pytest.mark.filterwarnings("ignore:store .* holds a split of single transitions")
@pytest.mark.parametrize("split", SPLITS)
def test_every_split_builds_and_every_transition_is_the_written_one(written, converted, tmp_path, split):
    out, _ = converted
    store = st.ReplayStore(bd.build_store(out, tmp_path / "store", ["Pong", "Breakout"], runs=[1, 2], split=split,
                                          progress=False))
    for game in ("Pong", "Breakout"):
        rows = _rows(written, game)
        gd = store.game(game)
        starts = np.asarray(gd.starts)
        assert len(starts) > 0
        t = store.transitions(game, starts, gamma=GAMMA)
        for i, (run, c, slot) in enumerate(store.source_of(game, starts)):
            exp = rows[(run, c)]
            before = exp["episode"][slot - 3:slot]
            assert exp["episode"][slot] >= 0 and ((before == -1) | (before == exp["episode"][slot])).all()
            np.testing.assert_array_equal(t["state"][i], exp["frames"][slot - 3:slot + 1])
            assert t["action"][i] == exp["action"][slot]
            ret, n = np.float32(0), store.n_step
            for k in range(n):
                ret += np.float32(GAMMA**k) * exp["reward"][slot + k]
                if exp["terminal"][slot + k]:
                    assert t["length"][i] == k + 1 and t["terminal"][i] == 1
                    break
            else:
                assert t["length"][i] == n and t["terminal"][i] == 0
                np.testing.assert_array_equal(t["next_state"][i], exp["frames"][slot + n - 3:slot + n + 1])
            assert t["reward"][i] == ret
        if split == "all":  # every Dopamine-valid start of every written checkpoint
            want = sum(int(((r["episode"] >= 0) & (np.arange(len(r["episode"])) >= 4)
                            & (np.arange(len(r["episode"])) <= len(r["episode"]) - 4)).sum())
                       for r in rows.values())
            assert len(starts) == want
        sampler = TransitionSampler(store, [game], batch_size=16, n_step=3, gamma=GAMMA, seed=1, prefetch=0,
                                    pin_memory=False)
        _, drawn = sampler.draw_rows(0)
        batch = sampler.sample(0)
        pos = np.searchsorted(starts, drawn)
        np.testing.assert_array_equal(batch["obs"].numpy(), t["state"][pos])
        np.testing.assert_array_equal(batch["action"].numpy(), t["action"][pos])
        sampler.close()
        if split == "all" or split.endswith(":episodes"):
            _check_segments(store, game, rows)


def _check_segments(store: st.ReplayStore, game: str, rows: dict) -> None:
    """Every unmasked step of a sequence segment is a consecutive row of one written episode."""
    L = 6
    sampler = SequenceSampler(store, [game], batch_size=16, seq_len=L, seed=2, prefetch=0, pin_memory=False)
    batch = sampler.sample(0)
    sampler.close()
    obs, act, term, mask = (batch[k].numpy() for k in ("obs", "action", "terminal", "mask"))
    for b in range(len(obs)):
        k = int(mask[b].sum())
        assert k >= 1 and mask[b, :k].all()
        found = False
        for exp in rows.values():
            for r in range(len(exp["episode"]) - k + 1):
                if exp["episode"][r] >= 0 and (exp["episode"][r:r + k] == exp["episode"][r]).all() \
                        and np.array_equal(exp["frames"][r:r + k], obs[b, :k]) \
                        and np.array_equal(exp["action"][r:r + k], act[b, :k]) \
                        and np.array_equal(exp["terminal"][r:r + k], term[b, :k]):
                    found = True
                    break
            if found:
                break
        assert found, f"segment {b} of {game} is not a piece of one written episode"


def test_a_missing_checkpoint_keeps_its_number_and_the_build_names_it(written, tmp_path):
    root = tmp_path / "gap"
    shutil.copytree(written["root"] / "Pong", root / "Pong")
    (root / "Pong" / "run_1-00001-of-00003").unlink()
    info = cv.convert(cv.open_source("rlu", root), tmp_path / "conv", progress=False)
    assert info["games"]["Pong"]["runs"]["1"]["checkpoints"] == [0, 2]
    with pytest.raises(dr.DQNReplayError, match=r"lacks checkpoints \[1\] between 0 and 2"):
        bd.build_store(tmp_path / "conv", tmp_path / "store", ["Pong"], runs=[1], split="all", progress=False)


def test_the_tfds_form_converts_to_the_same_rows(written, converted, prepared, tmp_path):
    out, _ = converted
    info = cv.convert(cv.open_source("rlu", prepared), tmp_path / "root", progress=False)
    assert sorted(info["games"]) == ["Breakout", "Pong"]
    assert list(info["games"]["Pong"]["runs"]) == ["1"]  # run 2 was not prepared
    for game, run in (("Pong", "1"), ("Breakout", "1"), ("Breakout", "2")):
        for c in PLAN[(game, run)]:
            a = dr.load_checkpoint(tmp_path / "root" / game / run / "replay_logs", c)
            b = dr.load_checkpoint(out / game / run / "replay_logs", c)
            for k in ("observation", "action", "reward", "terminal"):
                np.testing.assert_array_equal(a[k], b[k])


def test_terminal_frame_reading_drops_the_last_step_of_game_over_episodes(written, tmp_path):
    info = cv.convert(cv.open_source("rlu", written["root"], last_step="terminal-frame"), tmp_path / "root",
                      progress=False)
    rows = _rows(written, "Pong", "terminal-frame")
    for run, ckpts in (("1", PLAN[("Pong", "1")]), ("2", PLAN[("Pong", "2")])):
        for c in ckpts:
            a = dr.load_checkpoint(tmp_path / "root" / "Pong" / run / "replay_logs", c)
            np.testing.assert_array_equal(a["observation"], rows[(run, c)]["frames"])
            np.testing.assert_array_equal(a["terminal"], rows[(run, c)]["terminal"])
    n_over = sum(e["game_over"] for k in (("Pong", "1"), ("Pong", "2")) for e in written["stream"][k])
    n_all = sum(len(e["action"]) for k in (("Pong", "1"), ("Pong", "2")) for e in written["stream"][k])
    assert info["games"]["Pong"]["steps"] == n_all - n_over
    assert "terminal-frame" in info["limits"]["last_step"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.gz"))}


def test_damaged_files_are_refused_naming_them(written, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(written["root"], root)
    f = root / "Pong" / f"run_1-00001-of-{SHARDS['Pong']:05d}"
    stream = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(stream[: len(stream) - 100]))  # a truncated download
    with pytest.raises(SourceError, match=r"run_1-00001-of-00003.*truncated record"):
        list(RluSource(root).episodes("Pong"))
    if tfr.crc_checked():
        damaged = bytearray(stream)
        damaged[len(damaged) // 2] ^= 0xFF
        f.write_bytes(gzip.compress(bytes(damaged)))
        with pytest.raises(SourceError, match=r"run_1-00001-of-00003.*CRC"):
            list(RluSource(root).episodes("Pong"))
    with pytest.raises(SourceError, match="last_step must be one of"):
        RluSource(root, last_step="drop")
    (root / "Pong" / "run_1-00000-of-00004").write_bytes(b"")
    with pytest.raises(SourceError, match="disagree on the shard count"):
        RluSource(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no RL Unplugged Atari data.*gsutil.*tfds build"):
        RluSource(empty)


def test_both_forms_in_one_folder_are_refused(written, prepared, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(written["root"], both / "atari_episodes_ordered")
    shutil.copytree(prepared, both / "tfds")
    with pytest.raises(SourceError, match="both RL Unplugged's own files .* and a TFDS dataset"):
        RluSource(both)


def test_command_line_info_and_convert(written, converted, tmp_path):
    out, _ = converted
    run = [sys.executable, "-m", "workbench.data.sources"]
    info = subprocess.run([*run, "info", "--source", "rlu", str(written["root"])], capture_output=True, text=True,
                          check=True)
    described = json.loads(info.stdout)
    assert described["games"] == ["Breakout", "Pong"] and described["source"]["layout"] == "episodes"
    done = subprocess.run([*run, "convert", "--source", "rlu", str(written["root"]), "--out", str(tmp_path / "o"),
                           "--games", "Pong", "--no-progress"], capture_output=True, text=True, check=True)
    assert "Pong: 5 checkpoints" in done.stdout and str(tmp_path / "o" / "Pong" / "2" / "replay_logs") in done.stdout
    assert _tree(tmp_path / "o" / "Pong") == _tree(out / "Pong")
    bad = subprocess.run([*run, "convert", "--source", "minari", str(written["root"]), "--out", str(tmp_path / "m"),
                          "--rlu-last-step", "decision"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--rlu-last-step applies to another source kind" in bad.stderr


def test_verify_checks_an_rlu_copy_and_its_manifest(written, prepared, tmp_path):
    from workbench.data import verify as vf

    root = tmp_path / "copy"
    shutil.copytree(written["root"], root)
    rep = vf.verify_root(root)
    assert rep.kind == "rlu"
    missing = [p for p in rep.problems if "missing shard files [2] of 0..2" in p]
    assert [r.missing for r in rep.runs if (r.game, r.run) == ("Pong", "2")] == [[2]] and len(missing) == 1
    assert len(rep.problems) == 1
    ok = vf.verify_root(root, ["Breakout"], write_manifest=True)
    assert ok.ok and (root / vf.MANIFEST_NAME).is_file() and ok.manifest_files == 4
    assert vf.verify_root(root, ["Breakout"]).ok
    f = root / "Breakout" / "run_2-00001-of-00002"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    cut = vf.verify_root(root, ["Breakout"])
    assert any("run_2-00001-of-00002" in p and "truncated" in p for p in cut.problems)
    f.write_bytes(data)
    g = root / "Breakout" / "run_1-00000-of-00002"
    raw = bytearray(gzip.decompress(g.read_bytes()))
    raw[-40] ^= 0x01  # inside the last record's data
    g.write_bytes(gzip.compress(bytes(raw)))
    changed = vf.verify_root(root, ["Breakout"])
    assert any("run_1-00000-of-00002" in p and "changed" in p for p in changed.problems)
    if tfr.crc_checked():
        assert any("run_1-00000-of-00002" in p and "CRC" in p for p in changed.problems)
    g.unlink()
    gone = vf.verify_root(root, ["Breakout"])
    assert any("run_1-00000-of-00002" in p and "missing" in p for p in gone.problems)
    assert vf.main([str(root), "--games", "Breakout"]) == 2
    assert vf.verify_root(prepared).ok and vf.verify_root(prepared).kind == "rlu"


def test_build_detects_the_source_and_converts_it_first(written, converted, tmp_path, capsys):
    out, _ = converted
    root = str(written["root"])
    args = ["--games", "Pong", "--runs", "1,2", "--split", "all", "--no-progress"]
    assert bd.detect_source(root) == "rlu"
    assert bd.main([root, *args, "--out", str(tmp_path / "s")]) == 2
    assert "is a rlu source: give --converted DIR" in capsys.readouterr().err
    # a dry run before converting says what the conversion would read, and writes nothing
    assert bd.main([root, *args, "--converted", str(tmp_path / "c"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["convert"]["games"] == ["Pong"] and not (tmp_path / "c").exists()
    assert bd.main([root, *args, "--converted", str(tmp_path / "c"), "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert _tree(tmp_path / "c" / "Pong") == _tree(out / "Pong")
    ref = bd.build_store(out, tmp_path / "ref", ["Pong"], runs=[1, 2], split="all", progress=False)
    for name in ("frames.npy", "action.npy", "reward.npy", "terminal.npy"):
        assert (tmp_path / "s" / "Pong" / name).read_bytes() == (ref / "Pong" / name).read_bytes()
    # a DQN-Replay root needs no --converted, and refuses one; a wrong --source names its problem
    assert bd.main([str(out), *args, "--converted", str(tmp_path / "x"), "--dry-run"]) == 2
    assert "--converted is for a source that needs converting" in capsys.readouterr().err
    assert bd.main([root, *args, "--source", "minari", "--converted", str(tmp_path / "x"), "--dry-run"]) == 2
    assert "no Minari dataset" in capsys.readouterr().err


def test_the_shuffled_rlu_atari_form_is_put_back_in_checkpoint_and_episode_order(written, prepared, tmp_path):
    # rlu_atari has one shuffled 'train' split; TFDS writes it only through Apache Beam, so its layout is
    # made here from the prepared checkpoint-ordered files, given in reverse order under train's names
    src = prepared / "rlu_atari_checkpoints_ordered" / "Pong_run_1" / "1.1.0"
    dst = tmp_path / "tfds" / "rlu_atari" / "Pong_run_1" / "1.3.0"
    dst.mkdir(parents=True)
    shutil.copy(src / "dataset_info.json", dst / "dataset_info.json")
    files = sorted(src.glob("*.tfrecord-*"))[::-1]
    for i, f in enumerate(files):
        shutil.copy(f, dst / f"rlu_atari-train.tfrecord-{i:05d}-of-{len(files):05d}")
    got = list(RluSource(tmp_path / "tfds").episodes("Pong"))
    want = _expected_episodes(written, ("Pong", "1"))
    assert [(e.checkpoint, e.provenance["episode_id"]) for e in got] == \
        [(w["checkpoint"], w["episode_id"]) for w in want]
    for e, w in zip(got, want):
        np.testing.assert_array_equal(e.frames(0, len(e)), w["frames"])

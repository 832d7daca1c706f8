"""RL Unplugged Atari (DQN-Replay's data as TFRecord episodes), read from a local copy without TensorFlow.

Two local forms of the same data are read:

``episodes``
    RL Unplugged's own files, the input of the TFDS builders (``gs://rl_unplugged/atari_episodes_ordered``,
    see ``tensorflow_datasets/rl_unplugged/{rlu_common,atari_utils}.py``):
    ``{Game}/run_{R}-{shard:05d}-of-{n:05d}``, gzip-compressed TFRecord files, one whole episode per
    record as a ``tf.train.Example`` with ``checkpoint_idx``, ``episode_idx`` (int64),
    ``episode_return``, ``clipped_episode_return`` (float), and per step ``observations`` (PNG
    84x84x1), ``actions`` (int64), ``unclipped_rewards``, ``clipped_rewards``, ``discounts`` (float).
``tfds``
    What ``tfds.load`` / ``tfds build`` prepares from them: ``{data_dir}/{name}/{Game}_run_{R}/{version}/``
    with ``dataset_info.json`` and ``{name}-{split}.tfrecord-{i:05d}-of-{n:05d}``, ``name`` being
    ``rlu_atari_checkpoints_ordered`` (one split ``checkpoint_XX`` per checkpoint, episodes in order)
    or ``rlu_atari`` (one ``train`` split, shuffled: sorted back here by checkpoint and episode id).
    Each record is TFDS's serialization of an RLDS episode: ``checkpoint_id``, ``episode_id``,
    ``episode_return`` and ``steps/{observation,action,reward,discount,is_first,is_last,is_terminal}``
    (booleans as int64); versions before ``rlu_atari`` 1.3.0 / ``rlu_atari_checkpoints_ordered``
    1.1.0 also carry ``clipped_episode_return`` and ``steps/clipped_reward``.

Field mapping to an :class:`~workbench.data.sources.Episode` (both forms):

- run: ``R`` of the file or config name -> the DQN-Replay run folder ``R``;
- checkpoint: ``checkpoint_idx`` / ``checkpoint_id`` -> the DQN-Replay checkpoint number, unchanged
  (RL Unplugged numbers 0..49, one per 1M-step shard; the public ``.gz`` files number 0..50);
- observation: the PNG, decoded losslessly (``cv2.imdecode``): already DQN-Replay's 84x84
  grayscale pooled frame, so :func:`~workbench.data.sources.preprocess.dqn_frames` leaves it as is;
- action: ``actions`` / ``steps/action``, an index into the game's minimal action set (checked);
- reward: ``unclipped_rewards`` / ``steps/reward`` (raw); ``clipped_rewards`` is checked against
  ``np.clip(raw, -1, 1)`` and the number of differing steps recorded per episode;
- end: ``discounts[-1] == 0`` / ``steps/is_terminal[-1]`` -> ended by game over (``terminated`` on
  the last step), otherwise truncated (a time limit, or the run's end).

The last step of a game-over episode (:data:`LAST_STEPS`): RL Unplugged recorded its episodes from
the DQN agents' replay, where every stored step is a decision (the frame after the last action is
never stored), so by default (``last_step="decision"``) that step stays a transition: its action and
reward kept, terminal 1, exactly the row the ``.gz`` files hold. TFDS's RLDS conversion labels that
step's observation as the terminal state instead (``is_terminal``; its action and reward "invalid");
``last_step="terminal-frame"`` follows that reading and drops the step (the previous step becomes
the terminal one). The two readings differ only in the last row of game-over episodes.

Records are indexed first (checkpoint, episode id, file, offset; nothing else is kept), then read
again in order one at a time, and an episode's frames are decoded only when the converter writes
them, so memory stays at one episode's records whatever the size of a run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from workbench.data.sources import Episode, NoSourceData, SourceError, of_game
from workbench.data.sources import tfrecord as tfr
from workbench.games import canonical_game, minimal_action_set, suite_of

__all__ = ["LAST_STEPS", "RluRun", "RluSource"]

#: How the last step of a game-over episode is read (module doc).
LAST_STEPS = ("decision", "terminal-frame")
TFDS_NAMES = ("rlu_atari_checkpoints_ordered", "rlu_atari")
_RAW_FILE = re.compile(r"^run_(\d+)-(\d{5})-of-(\d{5})$")
_TFDS_CONFIG = re.compile(r"^(\w+?)_run_(\d+)$")
_TFDS_FILE = re.compile(r"^(?P<name>\w+)-(?P<split>[\w]+)\.tfrecord-(?P<i>\d{5})-of-(?P<n>\d{5})$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")

# per layout: the Example keys of each field
_KEYS = {
    "episodes": {"checkpoint": "checkpoint_idx", "episode": "episode_idx", "return": "episode_return",
                 "clipped_return": "clipped_episode_return", "observation": "observations", "action": "actions",
                 "reward": "unclipped_rewards", "clipped_reward": "clipped_rewards", "discount": "discounts"},
    "tfds": {"checkpoint": "checkpoint_id", "episode": "episode_id", "return": "episode_return",
             "clipped_return": "clipped_episode_return", "observation": "steps/observation", "action": "steps/action",
             "reward": "steps/reward", "clipped_reward": "steps/clipped_reward", "is_terminal": "steps/is_terminal"},
}


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str
    shard: int
    shards: int
    split: str  # tfds split ("checkpoint_03", "train"); "" for the episodes layout


@dataclass
class RluRun:
    """One game's run: its files in reading order."""

    layout: str  # "episodes" | "tfds"
    game: str
    run: str
    files: list[_File]
    folder: str  # relative to the source root
    dataset: str  # tfds dataset name and version, or "atari_episodes_ordered"
    missing_shards: list[int]
    info_sha256: str | None = None  # tfds dataset_info.json


def _game(name: str) -> str | None:
    try:
        game = canonical_game(name)
    except ValueError:
        return None
    return game if suite_of(game) == "atari" else None


def _find_episode_runs(root: Path) -> list[RluRun]:
    groups: dict[tuple[str, str], list[tuple[Path, int, int]]] = {}
    for p in sorted(root.rglob("run_*-of-*")):
        m = _RAW_FILE.match(p.name)
        if not m or not p.is_file():
            continue
        game = _game(p.parent.name)
        if game is None:
            continue
        groups.setdefault((game, str(int(m.group(1)))), []).append((p, int(m.group(2)), int(m.group(3))))
    runs = []
    for (game, run), items in sorted(groups.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        totals = {n for _, _, n in items}
        if len(totals) != 1:
            raise SourceError(f"{items[0][0].parent}: run_{run} files disagree on the shard count ({sorted(totals)}): "
                              "files of two different downloads?")
        n = totals.pop()
        have = {i for _, i, _ in items}
        files = [_File(p, str(p.relative_to(root)), i, n, "") for p, i, _ in sorted(items, key=lambda t: t[1])]
        runs.append(RluRun("episodes", game, run, files, str(items[0][0].parent.relative_to(root)),
                         "atari_episodes_ordered", sorted(set(range(n)) - have)))
    return runs


def _find_tfds_runs(root: Path) -> list[RluRun]:
    runs = []
    for info in sorted(root.rglob("dataset_info.json")):
        version_dir = info.parent
        config_dir = version_dir.parent
        name = config_dir.parent.name
        m = _TFDS_CONFIG.match(config_dir.name)
        if name not in TFDS_NAMES or not m or not _VERSION.match(version_dir.name):
            continue
        game = _game(m.group(1))
        if game is None:
            continue
        files = []
        for p in sorted(version_dir.iterdir()):
            fm = _TFDS_FILE.match(p.name)
            if fm and fm.group("name") == name:
                files.append(_File(p, str(p.relative_to(root)), int(fm.group("i")), int(fm.group("n")),
                                   fm.group("split")))
        by_split: dict[str, list[_File]] = {}
        for f in files:
            by_split.setdefault(f.split, []).append(f)
        for split, fs in by_split.items():
            want = set(range(fs[0].shards))
            have = {f.shard for f in fs}
            if have != want or len({f.shards for f in fs}) != 1:
                raise SourceError(f"{version_dir}: split {split!r} has shard files {sorted(have)} of "
                                  f"{sorted({f.shards for f in fs})}: a TFDS dataset is complete or broken "
                                  "(prepare it again with tfds build)")
        if not files:
            raise SourceError(f"{version_dir}: dataset_info.json but no {name}-*.tfrecord-* files")
        # splits in checkpoint order ("checkpoint_02" before "checkpoint_10"), shards in order
        files.sort(key=lambda f: (_split_order(f.split), f.shard))
        runs.append(RluRun("tfds", game, str(int(m.group(2))), files, str(version_dir.relative_to(root)),
                         f"{name}/{version_dir.name}", [], hashlib.sha256(info.read_bytes()).hexdigest()))
    # one version and one dataset per game and run: the same data twice would be converted twice
    seen: dict[tuple[str, str], RluRun] = {}
    for r in runs:
        key = (r.game, r.run)
        if key in seen:
            raise SourceError(f"{r.game} run {r.run} is under both {seen[key].folder} and {r.folder}: point the "
                              "source at one dataset and version (e.g. .../rlu_atari_checkpoints_ordered)")
        seen[key] = r
    return runs


def _split_order(split: str) -> tuple[int, str]:
    m = re.match(r"^checkpoint_(\d+)$", split)
    return (int(m.group(1)), split) if m else (-1, split)


@dataclass(frozen=True)
class _Entry:
    """One indexed episode record."""

    checkpoint: int
    episode: int
    file: int  # index into the run's files
    offset: int
    steps: int


class _Handles:
    """Open record streams by path, read forward (a backward seek reopens a gzip stream from its start)."""

    def __init__(self) -> None:
        self._open: dict[Path, BinaryIO] = {}

    def read(self, path: Path, offset: int) -> bytes:
        f = self._open.get(path)
        if f is None:
            if len(self._open) >= 4:
                self.close()
            f = self._open[path] = tfr.open_records(path)
        return tfr.read_record_at(f, offset, str(path))

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


class RluSource:
    """RL Unplugged Atari under ``path``, in either local form (module doc): a tree holding
    ``{Game}/run_{R}-XXXXX-of-NNNNN`` files, or a TFDS data dir holding
    ``rlu_atari_checkpoints_ordered/{Game}_run_{R}/{version}/`` (or ``rlu_atari/...``)."""

    kind = "rlu"

    def __init__(self, path: str | os.PathLike, *, last_step: str = "decision") -> None:
        if last_step not in LAST_STEPS:
            raise SourceError(f"last_step must be one of {list(LAST_STEPS)}, got {last_step!r}")
        self.last_step = last_step
        self.root = Path(path).resolve()
        if not self.root.is_dir():
            raise SourceError(f"RL Unplugged folder {str(path)!r} does not exist or is not a folder")
        episodes, tfds = _find_episode_runs(self.root), _find_tfds_runs(self.root)
        if episodes and tfds:
            raise SourceError(f"{self.root} holds both RL Unplugged's own files ({episodes[0].folder}) and a TFDS "
                              f"dataset ({tfds[0].folder}): point the source at one of them")
        self._runs = episodes or tfds
        if not self._runs:
            raise NoSourceData(
                f"no RL Unplugged Atari data under {self.root}: expected {{Game}}/run_{{R}}-00000-of-000NN files "
                "(gsutil -m cp -r gs://rl_unplugged/atari_episodes_ordered/{Game}) or a TFDS data dir with "
                "rlu_atari_checkpoints_ordered/{Game}_run_{R}/{version}/ (tfds build rlu_atari_checkpoints_ordered)")
        self.layout = self._runs[0].layout
        self._frames_handles = _Handles()
        self._cached: tuple[tuple[Path, int], list[bytes]] | None = None

    # -- listing -------------------------------------------------------------------------------

    def games(self) -> list[str]:
        return sorted({r.game for r in self._runs})

    def runs(self, game: str) -> list[str]:
        return [r.run for r in self._of(game)]

    def copies(self, games: set[str] | None = None) -> list[RluRun]:
        """The runs found (files in reading order, missing shards), of ``games`` (canonical names) or all."""
        return [r for r in self._runs if games is None or r.game in games]

    def canonical(self, game: str) -> str:
        """``game`` as this source names it (an error listing the games when it has none such)."""
        return self._of(game)[0].game

    def _of(self, game: str) -> list[RluRun]:
        return of_game(self._runs, game, f"the RL Unplugged data under {self.root}")

    # -- reading -------------------------------------------------------------------------------

    def _index(self, run: RluRun) -> list[_Entry]:
        keys = _KEYS[run.layout]
        entries = []
        for fi, f in enumerate(run.files):
            for offset, data in tfr.records(f.path):
                ex = tfr.decode_example(data, f"{f.rel} at byte {offset}")
                try:
                    ck = int(np.asarray(ex[keys["checkpoint"]])[0])
                    ep = int(np.asarray(ex[keys["episode"]])[0])
                    steps = len(ex[keys["action"]])
                except (KeyError, IndexError):
                    raise SourceError(f"{f.rel} at byte {offset}: not an RL Unplugged Atari episode (needs "
                                      f"{keys['checkpoint']}, {keys['episode']}, {keys['action']}; has "
                                      f"{sorted(ex)[:12]})") from None
                entries.append(_Entry(ck, ep, fi, offset, steps))
        order = sorted(entries, key=lambda e: (e.checkpoint, e.episode))
        for a, b in zip(order, order[1:]):
            if (a.checkpoint, a.episode) == (b.checkpoint, b.episode):
                raise SourceError(f"{run.game} run {run.run}: episode {a.episode} of checkpoint {a.checkpoint} appears "
                                  f"twice ({run.files[a.file].rel}, {run.files[b.file].rel})")
        return order

    def episodes(self, game: str) -> Iterator[Episode]:
        minimal = len(minimal_action_set(self._of(game)[0].game))
        reader = _Handles()
        try:
            for run in self._of(game):
                keys = _KEYS[run.layout]
                for e in self._index(run):
                    f = run.files[e.file]
                    where = f"{f.rel} at byte {e.offset} (checkpoint {e.checkpoint}, episode {e.episode})"
                    ex = tfr.decode_example(reader.read(f.path, e.offset), where)
                    ep = self._episode(run, f, e, ex, keys, minimal, where)
                    if len(ep):  # a game-over episode of one step read as "terminal-frame" has none
                        yield ep
        finally:
            reader.close()

    def _episode(self, run: RluRun, f: _File, e: _Entry, ex: dict, keys: dict[str, str], minimal: int,
                 where: str) -> Episode:
        try:
            action = np.asarray(ex[keys["action"]], dtype=np.int64)
            reward = np.asarray(ex[keys["reward"]], dtype=np.float64)
            clipped = np.asarray(ex[keys["clipped_reward"]], np.float64) if keys["clipped_reward"] in ex else None
            n_obs = len(ex[keys["observation"]])
            if run.layout == "episodes":
                game_over = bool(len(ex[keys["discount"]]) and np.asarray(ex[keys["discount"]])[-1] == 0)
            else:
                game_over = bool(len(ex[keys["is_terminal"]]) and np.asarray(ex[keys["is_terminal"]])[-1] != 0)
            ret = float(np.asarray(ex[keys["return"]])[0])
            clipped_ret = float(np.asarray(ex[keys["clipped_return"]])[0]) if keys["clipped_return"] in ex else None
        except (KeyError, IndexError) as err:
            raise SourceError(f"{where}: missing or empty field {err} (not an RL Unplugged Atari episode)") from None
        n = len(action)
        if not (len(reward) == n_obs == n) or (clipped is not None and len(clipped) != n):
            raise SourceError(f"{where}: {n} actions, {len(reward)} rewards, {n_obs} observations"
                              f"{'' if clipped is None else f', {len(clipped)} clipped rewards'}: the fields must "
                              "have one length")
        if n and ((action < 0) | (action >= minimal)).any():
            bad = int(action[(action < 0) | (action >= minimal)][0])
            raise SourceError(f"{where}: action {bad} outside {run.game}'s minimal action set (0..{minimal - 1})")
        keep = n - 1 if (game_over and self.last_step == "terminal-frame") else n
        terminated = np.zeros(keep, bool)
        truncated = np.zeros(keep, bool)
        if keep:
            terminated[-1] = game_over
            truncated[-1] = not game_over
        prov = {
            "layout": run.layout, "dataset": run.dataset, "file": f.rel, "offset": e.offset, "run": run.run,
            "checkpoint": e.checkpoint, "episode_id": e.episode, "steps_recorded": n, "steps": keep,
            "episode_return": ret, "clipped_episode_return": clipped_ret,
            # steps whose stored clipped reward is not np.clip(raw, -1, 1) (None: not stored, TFDS >= 1.3 / 1.1)
            "clipped_reward_mismatches": None if clipped is None else
            int(np.count_nonzero(clipped != np.clip(reward, -1.0, 1.0))),
        }
        if f.split:
            prov["split"] = f.split
        ep = Episode(action[:keep], reward[:keep], terminated, truncated, self._loader(f.path, e.offset, keys, keep),
                     prov, run=run.run, checkpoint=e.checkpoint)
        if keep:
            ep.check(where)
        return ep

    def _loader(self, path: Path, offset: int, keys: dict[str, str], steps: int):
        def frames(start: int, stop: int) -> np.ndarray:
            if not (0 <= start <= stop <= steps):
                raise SourceError(f"{path}: frames {start}..{stop} asked of an episode of {steps} steps")
            pngs = self._pngs(path, offset, keys["observation"])
            out = np.empty((stop - start, 84, 84), np.uint8)
            for i in range(start, stop):
                img = cv2.imdecode(np.frombuffer(pngs[i], np.uint8), cv2.IMREAD_UNCHANGED)
                if img is None or img.dtype != np.uint8 or img.reshape(-1).size != 84 * 84:
                    raise SourceError(f"{path} at byte {offset}: observation {i} is not an 84x84 grayscale PNG")
                out[i - start] = img.reshape(84, 84)
            return out

        return frames

    def _pngs(self, path: Path, offset: int, key: str) -> list[bytes]:
        if self._cached is None or self._cached[0] != (path, offset):
            ex = tfr.decode_example(self._frames_handles.read(path, offset), f"{path} at byte {offset}")
            self._cached = ((path, offset), list(ex[key]))
        return self._cached[1]

    # -- description ---------------------------------------------------------------------------

    def limits(self) -> dict[str, str]:
        out = {
            "checkpoint_ids": "RL Unplugged's checkpoint ids (0..49, one per 1M-step shard of a run, in training "
                              "order) are the DQN-Replay checkpoint numbers here; the public .gz files number "
                              "0..50, and which 50 of those 51 RL Unplugged holds is not documented",
            "checkpoint_contents": "each checkpoint holds whole episodes (RL Unplugged's grouping), where a .gz "
                                   "checkpoint is a ring of the last 1M steps cut at its ends",
            "last_step": (f"last step of a game-over episode read as {self.last_step!r} (module doc of "
                          "workbench.data.sources.rlu_source): 'decision' keeps it as the terminal transition, as "
                          "the .gz files store it; 'terminal-frame' (TFDS's RLDS reading) drops it"),
            "truncation": "episodes that did not end by game over (the run's end, a time limit) are stored as "
                          "terminal, as DQN-Replay does; source/checkpoint_<N>.npz 'truncated' marks them",
        }
        if not tfr.crc_checked():
            out["crc"] = "record data CRCs not checked (pip install google-crc32c, or -e '.[rlu]'); lengths are"
        return out

    def provenance(self) -> dict[str, Any]:
        runs = []
        for r in self._runs:
            runs.append({
                "game": r.game, "run": r.run, "layout": r.layout, "dataset": r.dataset, "folder": r.folder,
                "files": [{"file": f.rel, "bytes": f.path.stat().st_size, "split": f.split} for f in r.files],
                "missing_shards": r.missing_shards, "dataset_info_sha256": r.info_sha256,
            })
        return {"kind": self.kind, "path": str(self.root), "layout": self.layout, "last_step": self.last_step,
                "crc_checked": tfr.crc_checked(), "runs": runs}

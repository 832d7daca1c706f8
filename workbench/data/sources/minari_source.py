"""Minari datasets of Atari games, read from their local HDF5 folder with h5py (no network, no minari import).

A Minari dataset folder (``$MINARI_DATASETS_PATH/{namespace}/{name}-v{N}/data/``, what
``minari download`` or ``DataCollector.create_dataset`` leaves) holds ``metadata.json`` and, in the
``hdf5`` data format, ``main_data.hdf5`` with one group ``episode_{id}`` per episode:
``observations`` (T+1 frames: every step's plus the one after the last step), ``actions``,
``rewards``, ``terminations``, ``truncations`` (T each) and attributes ``id``, ``seed``,
``total_steps``. Image observations are raw ``uint8`` arrays (Minari < 0.5.4, and
``jpeg_encoding=False``), or one JPEG per frame (Minari 0.5.4's default ``jpeg_encoding=True``),
decoded here with Pillow exactly as Minari decodes them (``np.array(Image.open(BytesIO(b)))``).
The ``arrow``/``parquet`` data formats are refused (convert them with Minari to ``hdf5`` first).

The game comes from the dataset's ``env_spec`` (``ALE/Pong-v5`` with ``kwargs.game = "pong"``);
actions are mapped to the game's minimal action set (identity unless the env was made with
``full_action_space=True``, when ALE ids are mapped and an action outside the minimal set is an error).

Needs ``h5py`` (and ``pillow`` for JPEG-encoded frames): ``pip install -e ".[minari]"``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from workbench.data.sources import Episode, NoSourceData, SourceError, of_game
from workbench.data.sources.preprocess import frame_kind
from workbench.games import canonical_game, minimal_action_set, suite_of

__all__ = ["MinariSource"]

METADATA = "metadata.json"
MAIN_FILE = "main_data.hdf5"
_EPISODE_RE = re.compile(r"^episode_(\d+)$")


def _module(name: str, extra: str) -> ModuleType:
    """An optional dependency, or an error saying which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        need = name.split(".")[0]
        raise SourceError(f"reading Minari datasets needs {need}: pip install -e \".[{extra}]\"") from None


def _game_from_spec(env_id: str, kwargs: dict[str, Any], where: Path) -> str:
    candidates = []
    if isinstance(kwargs.get("game"), str):
        candidates.append(kwargs["game"])
    name = env_id.split("/")[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", re.sub(r"-ram$", "", name))
    candidates.append(name)
    for c in candidates:
        try:
            game = canonical_game(c)
        except ValueError:
            continue
        if suite_of(game) == "atari":
            return game
    raise SourceError(f"{where}: env {env_id!r} (kwargs game {kwargs.get('game')!r}) is not an Atari game of "
                      "workbench.games: only ALE datasets can become DQN-Replay rows")


@dataclass
class _Dataset:
    """One Minari dataset folder (the ``data`` folder holding metadata.json)."""

    data: Path
    rel: str  # path relative to the source root (provenance)
    metadata: dict[str, Any]
    game: str
    env_id: str
    env_kwargs: dict[str, Any]
    max_episode_steps: int | None
    obs_shape: tuple[int, ...]
    action_start: int
    action_map: np.ndarray | None  # source action - start -> minimal index (-1: not in the minimal set)

    @property
    def dataset_id(self) -> str:
        return str(self.metadata.get("dataset_id", self.rel))

    def describe(self) -> dict[str, Any]:
        md = self.metadata
        meta_bytes = (self.data / METADATA).read_bytes()
        return {
            "dataset_id": self.dataset_id, "path": self.rel, "game": self.game, "env_id": self.env_id,
            "env_kwargs": self.env_kwargs, "max_episode_steps": self.max_episode_steps,
            "minari_version": md.get("minari_version"), "data_format": md.get("data_format", "hdf5"),
            "jpeg_encoding": md.get("jpeg_encoding"), "observation_shape": list(self.obs_shape),
            "total_episodes": md.get("total_episodes"), "total_steps": md.get("total_steps"),
            "algorithm_name": md.get("algorithm_name"), "author": md.get("author"),
            "code_permalink": md.get("code_permalink"), "full_action_space": self.action_map is not None,
            "metadata_sha256": hashlib.sha256(meta_bytes).hexdigest(),
            "data_bytes": (self.data / MAIN_FILE).stat().st_size,
        }


def _open_dataset(data: Path, root: Path) -> _Dataset:
    try:
        md = json.loads((data / METADATA).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{data / METADATA}: unreadable Minari metadata ({e})") from None
    fmt = md.get("data_format", "hdf5")
    if fmt != "hdf5":
        raise SourceError(f"{data}: Minari data_format {fmt!r} is not read here, only 'hdf5' (re-save the dataset "
                          "with Minari in the hdf5 format)")
    if not (data / MAIN_FILE).is_file():
        raise SourceError(f"{data}: {MAIN_FILE} is missing (an incomplete download?)")
    spec_text = md.get("env_spec")
    if not isinstance(spec_text, str):
        raise SourceError(f"{data / METADATA}: no env_spec recorded, so the game is unknown")
    spec = json.loads(spec_text)
    env_id, kwargs = str(spec.get("id")), dict(spec.get("kwargs") or {})
    game = _game_from_spec(env_id, kwargs, data)
    obs = json.loads(md["observation_space"]) if isinstance(md.get("observation_space"), str) else None
    if not obs or obs.get("type") != "Box" or obs.get("dtype") != "uint8":
        raise SourceError(f"{data}: observation space {str(md.get('observation_space'))[:120]!r} is not a uint8 image "
                          "Box: make the dataset with obs_type='rgb' or 'grayscale'")
    shape = tuple(int(s) for s in obs["shape"])
    try:
        frame_kind(shape)
    except ValueError as e:
        raise SourceError(f"{data}: {e}") from None
    act = json.loads(md["action_space"]) if isinstance(md.get("action_space"), str) else None
    if not act or act.get("type") != "Discrete":
        raise SourceError(f"{data}: action space {md.get('action_space')!r} is not Discrete")
    n, start = int(act["n"]), int(act.get("start", 0))
    minimal = minimal_action_set(game)
    action_map = None
    if kwargs.get("full_action_space"):
        action_map = np.full(max(n, 18), -1, dtype=np.int64)
        action_map[list(minimal)] = np.arange(len(minimal))
    elif n != len(minimal):
        raise SourceError(f"{data}: Discrete({n}) actions, but {game}'s minimal action set has {len(minimal)} and the "
                          "env_spec does not say full_action_space=True: cannot map the actions")
    mes = spec.get("max_episode_steps")
    return _Dataset(data, str(data.relative_to(root)) if data != root else ".", md, game, env_id, kwargs,
                    int(mes) if mes is not None else None, shape, start, action_map)


def _find_datasets(path: Path) -> list[Path]:
    if (path / METADATA).is_file():
        return [path]
    if (path / "data" / METADATA).is_file():
        return [path / "data"]
    return sorted({p.parent for p in path.rglob(METADATA)})


class MinariSource:
    """Every Minari dataset (HDF5 format) under ``path``: one dataset folder (or its ``data``
    folder), or a tree of them such as ``$MINARI_DATASETS_PATH``. Several datasets of one game
    are read one after the other, in path order."""

    kind = "minari"

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path).resolve()
        if not self.root.is_dir():
            raise SourceError(f"Minari dataset folder {str(path)!r} does not exist or is not a folder")
        found = _find_datasets(self.root)
        if not found:
            raise NoSourceData(f"no Minari dataset under {self.root} (expected a folder holding data/{METADATA} and "
                              f"data/{MAIN_FILE}, e.g. $MINARI_DATASETS_PATH/atari/pong/expert-v0)")
        self._datasets = [_open_dataset(d, self.root) for d in found]

    def games(self) -> list[str]:
        return sorted({d.game for d in self._datasets})

    def _of(self, game: str) -> list[_Dataset]:
        return of_game(self._datasets, game, f"the Minari datasets under {self.root}")

    def episodes(self, game: str) -> Iterator[Episode]:
        h5py = _module("h5py", "minari")
        for ds in self._of(game):
            path = ds.data / MAIN_FILE
            with h5py.File(path, "r") as f:
                ids = sorted(int(m.group(1)) for k in f.keys() if (m := _EPISODE_RE.match(k)))
                for eid in ids:
                    g = f[f"episode_{eid}"]
                    where = f"{path}:/episode_{eid}"
                    try:
                        raw_action = np.asarray(g["actions"][()], dtype=np.int64).reshape(-1)
                        reward = np.asarray(g["rewards"][()], dtype=np.float64).reshape(-1)
                        terminated = np.asarray(g["terminations"][()], dtype=bool).reshape(-1)
                        truncated = np.asarray(g["truncations"][()], dtype=bool).reshape(-1)
                        n_obs = len(g["observations"])
                    except KeyError as e:
                        raise SourceError(f"{where}: missing {e} (not a Minari episode group)") from None
                    action = self._map_actions(ds, raw_action, where)
                    if n_obs != len(action) + 1:
                        raise SourceError(f"{where}: {n_obs} observations for {len(action)} steps (Minari stores T+1)")
                    seed = g.attrs.get("seed")
                    prov = {
                        "dataset_id": ds.dataset_id, "dataset_path": ds.rel, "episode_id": eid,
                        "seed": int(seed) if seed is not None else None, "steps": len(action),
                    }
                    ep = Episode(action, reward, terminated, truncated, self._loader(ds, eid), prov)
                    ep.check(where)
                    yield ep

    @staticmethod
    def _map_actions(ds: _Dataset, raw: np.ndarray, where: str) -> np.ndarray:
        a = raw - ds.action_start
        if ds.action_map is None:
            bad = (a < 0) | (a >= len(minimal_action_set(ds.game)))
            if bad.any():
                raise SourceError(f"{where}: action {int(raw[bad][0])} outside the action space")
            return a
        bad = (a < 0) | (a >= len(ds.action_map))
        mapped = np.where(bad, -1, ds.action_map[np.clip(a, 0, len(ds.action_map) - 1)])
        if (mapped < 0).any():
            i = int(np.flatnonzero(mapped < 0)[0])
            raise SourceError(f"{where}: ALE action {int(raw[i])} at step {i} is not in {ds.game}'s minimal action set "
                              f"{list(minimal_action_set(ds.game))}: DQN-Replay rows hold minimal-set indices")
        return mapped

    @staticmethod
    def _loader(ds: _Dataset, eid: int):
        path, shape = ds.data / MAIN_FILE, ds.obs_shape

        def frames(start: int, stop: int) -> np.ndarray:
            h5py = _module("h5py", "minari")
            with h5py.File(path, "r") as f:
                d = f[f"episode_{eid}/observations"]
                raw = d[start:stop]
            if raw.dtype == np.uint8 and raw.shape[1:] == shape:
                return np.asarray(raw)
            return _decode_jpegs(raw, shape, f"{path}:/episode_{eid}/observations")

        return frames

    def limits(self) -> dict[str, str]:
        sticky = {d.dataset_id: d.env_kwargs.get("repeat_action_probability", "not recorded (ALE v5's default: 0.25)")
                  for d in self._datasets}
        skip = {d.dataset_id: d.env_kwargs.get("frameskip", "not recorded") for d in self._datasets}
        out = {
            "checkpoint_ids": "Minari records no checkpoints of the policy that collected the data: checkpoints are "
                              "consecutive slices of the episode stream (dataset order), so first:K / last:F select "
                              "by position in the stream, not by training progress; one run, '1'",
            "sticky_actions": f"repeat_action_probability per dataset {sticky}; DQN-Replay was recorded with 0.25",
            "frame_skip": f"frameskip per dataset {skip}; DQN-Replay used 4",
            "frame_pooling": "frames are single emulator frames (ALE v5 returns the last frame of the skip): "
                             "DQN-Replay's max-pool over the last two frames of each step cannot be redone",
            "final_observation": "the observation after each episode's last step is dropped (DQN-Replay does not "
                                 "store it)",
            "truncation": "time-limit truncations (and the collector's cut last episode) are stored as terminal, as "
                          "DQN-Replay does; source/checkpoint_<N>.npz 'truncated' marks them",
        }
        if any(d.metadata.get("jpeg_encoding") for d in self._datasets):
            out["lossy_frames"] = ("some datasets stored frames as JPEG (Minari's jpeg_encoding): converted rows carry "
                                   "its compression noise, not the emulator's exact pixels")
        return out

    def provenance(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root), "datasets": [d.describe() for d in self._datasets]}


def _decode_jpegs(raw: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """JPEG bytes per frame (vlen or fixed-width uint8 rows) -> frames, decoded as Minari does."""
    image = _module("PIL.Image", "minari")
    out = np.empty((len(raw), *shape), dtype=np.uint8)
    for i, b in enumerate(raw):
        data = np.asarray(b, dtype=np.uint8).tobytes()
        if data[:2] != b"\xff\xd8":
            raise SourceError(f"{where}: frame {i} is neither a {shape} uint8 array nor a JPEG")
        arr = np.array(image.open(io.BytesIO(data)), dtype=np.uint8)
        if arr.size != out[i].size:
            raise SourceError(f"{where}: JPEG frame {i} decodes to {arr.shape}, the observation space says {shape}")
        out[i] = arr.reshape(shape)
    return out

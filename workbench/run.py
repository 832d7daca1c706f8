"""Run folders as one object: the one reader (and writer of the shared parts) of a run.

A run folder is what one workbench job leaves behind::

    run_dir/.workbench-run     marker: this folder belongs to the workbench
    run_dir/.workbench-lock    the one writer's lock (pid, host, start time); see :class:`RunLock`
    run_dir/config.json        {"kind", "format", "params", "resolved"}
    run_dir/metrics.jsonl      training metrics of the last stage (earlier stages: <stage>/metrics.jsonl)
    run_dir/checkpoints/       safetensors + JSON checkpoints (workbench.checkpoint)
    run_dir/eval/*.json        evaluation scores (workbench.evaluate)
    run_dir/figures/  summary.json  data/

``kind`` says which job wrote it (``pretrain``, ``evaluate``, later ``finetune``, ``online``,
``sweep``); ``params`` are the job's parameters as given, ``resolved`` what they resolved to
(algorithm, model, games, the algorithm's settings, and each stage's steps, batch and lr).
The pipeline, the trainer, the analysis, the explorer and the video CLI read runs through
:class:`Run`. Its policy for missing or bad files: the reader methods never guess. A missing
optional part is ``None``/empty; an unreadable ``config.json`` or checkpoint is an error naming
the file; unreadable metric lines (cut by a kill) are skipped and counted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import checkpoint as ckpt_io
from workbench.algos.base import Algo, get_algo, recorded_settings
from workbench.devices import resolve_device
from workbench.fileio import (
    LockHeld,
    acquire_flock,
    append_text,
    atomic_write_json,
    atomic_write_text,
    refuse_symlink,
    release_flock,
)
from workbench.settings import from_params

__all__ = ["CONFIG_FORMAT", "KINDS", "LOCK", "MARKER", "ResumeMismatch", "Run", "RunLock", "RunLocked",
           "find_run_dir", "load_algo"]

MARKER = ".workbench-run"
LOCK = ".workbench-lock"
CONFIG_FORMAT = 2
KINDS = ("pretrain", "evaluate", "finetune", "online", "sweep")


class ResumeMismatch(ValueError):
    """Resuming into a run whose configuration differs in a field that may not change."""


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


def check_writable(path: Path) -> None:
    """Refuse a folder the workbench may not write into: anything but a new or empty folder (the
    lock file aside) or one it marked. The message lists what is there."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output_dir {path} is a file, not a run folder")
    if path.resolve() == Path.cwd().resolve() and path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"output_dir {str(path)!r} is the current directory; give a run folder of its own")
    if path.is_dir() and not (path / MARKER).is_file():
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if entries:
            listing = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
            raise FileExistsError(
                f"output_dir {path} is not empty and is not a workbench run (no {MARKER}); it holds: {listing}. "
                "Choose a new or empty folder."
            )


class RunLock:
    """The one-writer lock of a run folder: an OS lock (``flock``) on ``<run>/.workbench-lock``.

    The OS drops the lock when its process dies, however it dies, so a lock file left by a killed
    run is stale by construction and simply taken over. The file holds the holder's pid, host and
    start time, which a refused second writer reports. (flock is per host: on a network file
    system shared by several hosts, two hosts' runs are not kept apart.)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def file(self) -> Path:
        return self.path / LOCK

    def acquire(self) -> RunLock:
        check_writable(self.path)  # never put a lock file into a folder that is not ours
        self.path.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock file that is a symbolic link is refused, never truncated through
        try:
            fd = acquire_flock(self.file, "the run's lock file")
        except LockHeld as held:
            raise RunLocked(
                f"{self.path} is being written by another workbench run ({held.holder}); wait for it to finish, "
                "stop it, or choose another output_dir"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            release_flock(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def find_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run folder holding ``path`` (a run, its checkpoints/ folder, one checkpoint, or a
    stage's sub-folder): the nearest folder upwards with a ``config.json``."""
    p = Path(path).resolve()
    for cand in [p, *p.parents][:5]:  # a stage's checkpoint is 4 levels below its run
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"{path} is not inside a workbench run folder: no config.json in it or above it")


@dataclass
class Run:
    """One run folder. ``Run(path)`` only names it; nothing is read until asked."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """The run holding ``path`` (run folder, checkpoints folder or a checkpoint)."""
        run = cls(find_run_dir(path))
        run.config  # noqa: B018  (fail now, naming the file, if it is unreadable)
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def config(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.config_path} is missing: {self.path} is not a workbench run") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.config_path} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != CONFIG_FORMAT or doc.get("kind") not in KINDS:
            raise ValueError(
                f"{self.config_path} is not a workbench run config of format {CONFIG_FORMAT} (it needs 'kind' in "
                f"{KINDS}, 'params' and 'resolved'); it was written by another tool or an older workbench"
            )
        return doc

    @property
    def kind(self) -> str:
        return str(self.config["kind"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.config.get("params") or {})

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.config.get("resolved") or {})

    @property
    def algo_name(self) -> str:
        return str(self.resolved.get("algo", "unknown"))

    @property
    def model(self) -> str:
        return str(self.resolved.get("model", "unknown"))

    @property
    def games(self) -> tuple[str, ...]:
        return tuple(self.resolved.get("games", ()))

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ parts

    def stage_dirs(self) -> list[tuple[str, Path]]:
        """(stage name, folder) of each training stage, in order."""
        stages = self.resolved.get("stages") or [{"name": "train", "subdir": ""}]
        return [(s["name"], self.path / s["subdir"]) for s in stages]

    def metrics(self, stage: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Metric records of one stage (default: the last) and the number of unreadable lines."""
        stages = dict(self.stage_dirs())
        folder = stages[stage] if stage is not None else self.stage_dirs()[-1][1]
        return read_jsonl(folder / "metrics.jsonl")

    def all_metrics(self, file: str = "metrics.jsonl") -> tuple[list[dict[str, Any]], int]:
        """Every stage's records, each tagged ``stage``, with steps continued across stages
        (``file="diagnostics.jsonl"``: the representation diagnostics, on the same steps)."""
        out: list[dict[str, Any]] = []
        bad, offset = 0, 0
        for name, folder in self.stage_dirs():
            records, b = read_jsonl(folder / file)
            bad += b
            for r in records:
                out.append({**r, "stage": name, "step": r.get("step", 0) + offset})
            # continue from the stage's last step (its metrics), so both files share one axis
            steps, _ = read_jsonl(folder / "metrics.jsonl") if file != "metrics.jsonl" else (records, 0)
            offset += max((r.get("step", 0) for r in steps), default=0)
        return out, bad

    def checkpoint(self) -> Path | None:
        """The newest complete checkpoint of the last stage, or None."""
        return ckpt_io.latest_checkpoint(self.stage_dirs()[-1][1])

    def score_files(self) -> list[Path]:
        """Evaluation files, the pretraining one (eval/scores.json) first, then newest first."""
        folder = self.path / "eval"
        if not folder.is_dir():
            return []
        rest = sorted((p for p in folder.glob("*.json") if p.name != "scores.json"),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        return [p for p in [folder / "scores.json", *rest] if p.is_file()]

    # ------------------------------------------------------------------ the algorithm

    def build_algo(self, *, device: str = "auto", checkpoint: str | os.PathLike[str] | None = None) -> tuple[Any, Path]:
        """Rebuild the run's algorithm from the registry and load a checkpoint (default: the
        latest); returns (algo in eval mode on ``device``, checkpoint folder).

        The checkpoint is verified first (checksums, tensor names, shapes and dtypes): non-finite
        weights are refused here, so the evaluator, the explorer and the video CLI never play them."""

        ckpt = ckpt_io.resolve_checkpoint(checkpoint if checkpoint is not None else self.path)
        resolved = self.resolved
        spec = get_algo(self.algo_name)
        # The algorithm's settings, with those it computed from the data (e.g. reward scales).
        values = {**recorded_settings(spec.settings_class, resolved.get("settings", {})),
                  **resolved.get("data_settings", {})}
        settings: Any = from_params(spec.settings_class, values, what=f"{spec.name} setting")
        algo = spec.build(self.model, self.games, settings, 0)  # every weight comes from the checkpoint
        ckpt_io.load_checkpoint(ckpt, algo.model, target=algo.target_model)
        algo.to(resolve_device(device))
        algo.model.eval()
        return algo, ckpt

    # ------------------------------------------------------------------ writing

    def is_marked(self) -> bool:
        return (self.path / MARKER).is_file()

    def create(self, kind: str, params: dict[str, Any], resolved: dict[str, Any]) -> None:
        """Mark the folder and write ``config.json`` (atomically)."""
        if kind not in KINDS:
            raise ValueError(f"unknown run kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / MARKER, "This folder is a workbench run; the workbench may rewrite it.\n")
        atomic_write_json(self.config_path, {"kind": kind, "format": CONFIG_FORMAT, "params": params,
                                             "resolved": resolved})

    def start(self, kind: str, params: dict[str, Any], resolved: dict[str, Any], *, resume: bool,
              may_change: Iterable[str], entries: Iterable[str]) -> None:
        """Open this folder for a job of ``kind``: new, resumed, or reset.

        A file, or a non-empty folder without the marker, is refused (listing what it holds).
        With ``resume`` an existing run is compared with the new configuration first
        (:meth:`check_resume`: fields in ``may_change`` are applied and recorded in
        ``history.jsonl``; any other difference stops here, before a weight is loaded). Without
        it, the job's own ``entries`` of the existing run are deleted. Then ``config.json`` is
        (re)written. Any of ``entries`` (or ``config.json``) that is a symbolic link is refused
        first, naming it: a job never writes, truncates or prunes through a link in its folder."""
        check_writable(self.path)
        entries = tuple(entries)
        self.refuse_links([*entries, "config.json"])
        if self.is_marked() and self.config_path.is_file():
            if resume:
                applied = self.check_resume(kind, params, resolved, may_change)
                if applied:
                    old = self.params
                    self.record_history({"event": "resume",
                                         "changed": {k: [old.get(k), params.get(k)] for k in applied}})
            else:
                self.clear(entries)
        self.create(kind, params, resolved)

    def refuse_links(self, entries: Iterable[str]) -> None:
        """Raise :class:`workbench.fileio.SymlinkError` naming the first of ``entries`` of this run
        folder that is a symbolic link."""
        for name in entries:
            refuse_symlink(self.path / name, "run folder entry")

    def update_resolved(self, values: dict[str, Any]) -> None:
        """Add values resolved during the job (e.g. ``data_settings`` computed from the built
        store) to ``config.json`` (atomically)."""
        doc = self.config
        doc["resolved"] = {**doc.get("resolved", {}), **values}
        atomic_write_json(self.config_path, doc)

    def check_resume(self, kind: str, params: dict[str, Any], resolved: dict[str, Any],
                     may_change: Iterable[str]) -> list[str]:
        """Compare a new job's configuration with this run's, before any weight is loaded.

        Returns the names of changed fields that may change (they are applied); raises
        :class:`ResumeMismatch` naming every other differing field and the two ways out.
        """
        old = self.config
        may = set(may_change)
        changed: list[str] = []
        if old["kind"] != kind:
            changed.append("kind")
        old_params, old_resolved = old.get("params", {}), old.get("resolved", {})
        for key in sorted(set(old_params) | set(params)):
            if old_params.get(key) != params.get(key):
                changed.append(key)
        for key in ("algo", "model", "games", "settings"):
            if old_resolved.get(key) != resolved.get(key) and f"resolved.{key}" not in changed:
                changed.append(f"resolved.{key}")
        # The content hash of the checkpoint a fine-tune started from (recorded since issue 27):
        # a source retrained or replaced since is another experiment, wherever its path points.
        old_source, new_source = _source_hash(old_resolved), _source_hash(resolved)
        if old_source and old_source != new_source:
            changed.append("resolved.source")
        blocking = [k for k in changed if k not in may and not (k.startswith("resolved.") and k[9:] in may)]
        if blocking:
            def show(key: str) -> str:
                src_old, src_new = (old_resolved, resolved) if key.startswith("resolved.") else (old_params, params)
                name = key.split(".", 1)[-1] if key.startswith("resolved.") else key
                if key == "kind":
                    return f"kind: {old['kind']!r} -> {kind!r}"
                if key == "resolved.source":
                    return (f"source checkpoint: {old_resolved['source'].get('checkpoint')} (sha256 "
                            f"{_source_hash(old_resolved)}) -> {(resolved.get('source') or {}).get('checkpoint')} "
                            f"(sha256 {_source_hash(resolved)}); the run's weights came from the first")
                return f"{key}: {src_old.get(name)!r} -> {src_new.get(name)!r}"

            raise ResumeMismatch(
                f"{self.path} holds a run with a different configuration; resuming it would mix two "
                f"experiments. Differing fields: {'; '.join(show(k) for k in blocking)}. Either choose another "
                f"output_dir, or pass resume=False to start this run afresh in {self.path} (its checkpoints, "
                "metrics and evaluations are replaced)."
            )
        return [k for k in changed if k in may]

    def record_history(self, entry: dict[str, Any]) -> None:
        """Append one line to ``history.jsonl`` (changes applied on resume)."""
        append_text(self.path / "history.jsonl", json.dumps(entry) + "\n", "the run's history")

    def clear(self, entries: Iterable[str]) -> None:
        """Delete the named workbench-made entries of a marked run (for ``resume=False``)."""
        if not self.is_marked() or self.path.is_symlink():
            raise ValueError(f"{self.path} is not marked as a workbench run ({MARKER} missing): refusing to delete")
        for name in entries:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()


def _source_hash(resolved: dict[str, Any]) -> str | None:
    """``resolved.source.sha256``: the source checkpoint's content hash a job recorded, or None."""
    source = resolved.get("source")
    digest = source.get("sha256") if isinstance(source, dict) else None
    return str(digest) if digest else None


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSONL metrics file (error records left out) and the count of unreadable lines."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # a line cut by an interrupted write
            continue
        if isinstance(rec, dict) and "error" not in rec:
            records.append(rec)
    return records, bad


def load_algo(checkpoint: str | os.PathLike[str], *, device: str = "auto") -> tuple[Algo, Run, Path]:
    """Rebuild a run's algo from its ``config.json`` and load a checkpoint's weights.

    Returns (algo in eval mode, the run, the checkpoint directory).
    """
    ckpt = ckpt_io.resolve_checkpoint(checkpoint)  # refuses pickles, names what is missing
    run = Run.open(ckpt)
    algo, ckpt = run.build_algo(device=device, checkpoint=ckpt)
    return algo, run, ckpt

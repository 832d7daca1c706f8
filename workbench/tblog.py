"""TensorBoard event files beside ``metrics.jsonl``: a live view of every job (``tensorboard --logdir runs``).

Every folder that holds a ``metrics.jsonl`` (a run, or a stage's sub-folder of one) gets a
``tensorboard/`` folder of event files: each logged record's numbers as scalars under their own
names at the record's step, the evaluation scores (``eval/<game>/mean``, ``eval/aggregate/iqm``, ...),
and the configuration as text once per run (step 0). ``metrics.jsonl`` stays the record the
workbench reads; the event files are only a view of it.

One :class:`EventLog` is one new event file (a resumed run, or each chunk of a snapshot schedule,
adds a file to the folder; TensorBoard reads the folder as one run). A log is opened with
``purge_from`` = the first step it may redo; in a folder that already holds event files it
starts with TensorBoard's restart marker (``SessionLog.START``) at that step, so steps an
interrupted session logged after its last checkpoint are dropped by the reader, as
``metrics.jsonl`` drops them. Events are written synchronously (no
background thread, nothing lost when a job fails) and each is flushed, so a live TensorBoard sees it.

Symbolic links: the ``tensorboard`` folder is refused when it is one
(:class:`workbench.fileio.SymlinkError`), and the event file is created with ``O_EXCL | O_NOFOLLOW``
under a name no other writer uses, so nothing is ever written through a link out of the run.

``WORKBENCH_TENSORBOARD=0`` turns event files off; a log opened with ``enabled=False`` (ranks
other than 0 under DDP) is a no-op.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
from tensorboard.summary.writer.record_writer import RecordWriter

from workbench.fileio import open_nofollow, refuse_symlink
from workbench.run import MARKER

__all__ = ["ENV", "FOLDER", "EventLog", "disabled_by_env", "open_log", "run_config"]

FOLDER = "tensorboard"
"""The event files' folder inside a run (or stage) folder."""
ENV = "WORKBENCH_TENSORBOARD"
"""``0`` (or false/no/off) turns event files off."""

_uid = itertools.count()


def disabled_by_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off")


def _numbers(record: Mapping[str, Any], prefix: str = "", top: bool = True) -> dict[str, float]:
    """The record's numbers (nested mappings flattened with ``/``), its own ``step`` aside;
    booleans, strings and None are not scalars."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_numbers(value, name + "/", top=False))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and not (top and key == "step"):
            out[name] = float(value)
    return out


def _text_summary(tag: str, text: str) -> Summary:
    """A TensorBoard text summary as torch.utils.tensorboard writes it (the text plugin's format:
    a 1-element DT_STRING tensor, tag suffixed ``/text_summary``).
    Built here because importing torch.utils.tensorboard loads TensorFlow when that is installed
    (seconds at every job start)."""
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=f"{tag}/text_summary", metadata=meta, tensor=tensor)])

class EventLog:
    """One TensorBoard event file in ``folder`` (created on open); ``folder=None`` is a no-op."""

    def __init__(self, folder: str | os.PathLike[str] | None, *, purge_from: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.path: Path | None = None
        self._writer: RecordWriter | None = None
        if self.folder is None:
            return
        refuse_symlink(self.folder, "TensorBoard folder")
        self.folder.mkdir(exist_ok=True)
        refuse_symlink(self.folder, "TensorBoard folder")  # (made by another process in between)
        earlier = any(p.name.startswith("events.out.tfevents.") for p in self.folder.iterdir())
        fd = None
        while fd is None:  # a name of its own: time, host, process and a counter, never an existing file
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{next(_uid):06d}")
            try:
                fd = open_nofollow(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "TensorBoard event file")
            except FileExistsError:
                continue
        self.path = self.folder / name
        self._writer = RecordWriter(os.fdopen(fd, "wb"))
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_from is not None and earlier:
            # readers drop every event at steps >= purge_from written before this marker
            self._add(Event(wall_time=time.time(), step=int(purge_from),
                            session_log=SessionLog(status=SessionLog.START)))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def _add(self, event: Event) -> None:
        if self._writer is None:
            return
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is None:
            return
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._add(Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, record: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Every number of ``record`` (its ``step`` aside) under its name (``prefix`` before it),
        at ``step`` (default: the record's own ``step``), in one event."""
        if self._writer is None:
            return
        at = int(record["step"] if step is None else step)
        values = [Summary.Value(tag=k, simple_value=v) for k, v in _numbers(record, prefix).items()]
        if values:
            self._add(Event(wall_time=time.time(), step=at, summary=Summary(value=values)))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Text (markdown) shown in TensorBoard's text tab."""
        if self._writer is None:
            return
        self._add(Event(wall_time=time.time(), step=int(step), summary=_text_summary(tag, text)))

    def config(self, config: Mapping[str, Any], tag: str = "config", step: int = 0) -> None:
        """A configuration as indented JSON (a markdown code block)."""
        body = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.text(tag, "\n".join("    " + line for line in body.splitlines()), step)

    def scores(self, result: Mapping[str, Any], step: int, prefix: str = "eval") -> None:
        """An evaluator result (``workbench.evaluate.evaluate``): each game's mean and
        human-normalized mean, and the aggregates (over games' means) when there are any."""
        if self._writer is None:
            return
        record: dict[str, float] = {}
        for game, scores in (result.get("per_game") or {}).items():
            episodes = scores.get("scores") or []
            mean = scores.get("mean", sum(episodes) / len(episodes) if episodes else None)
            if mean is not None:
                record[f"{prefix}/{game}/mean"] = float(mean)
        for game, value in (result.get("human_normalized") or {}).items():
            if value is not None:
                record[f"{prefix}/{game}/human_normalized"] = float(value)
        for name, value in (result.get("aggregates") or {}).items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                record[f"{prefix}/aggregate/{name}"] = float(value)
        self.scalars(record, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(folder: str | os.PathLike[str], *, enabled: bool = True, purge_from: int | None = None) -> EventLog:
    """The :class:`EventLog` of a run or stage folder (``<folder>/tensorboard``); a no-op when
    ``enabled`` is false or :data:`ENV` turns event files off."""
    if not enabled or disabled_by_env():
        return EventLog(None)
    return EventLog(Path(folder) / FOLDER, purge_from=purge_from)


def run_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.json`` of the workbench run ``folder`` is (or is a stage folder of), or None."""
    folder = Path(folder)
    for cand in (folder, folder.parent):
        path = cand / "config.json"
        if (cand / MARKER).is_file() and path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return config if isinstance(config, dict) else None
    return None

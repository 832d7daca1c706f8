"""What every job shares (pretraining, offline and online fine-tuning, and any job to come).

A job is a config class (validated parameters, ``resolve()``, ``run_dir``) and a function that
runs it. The skeleton around them is written once here:

- :class:`Job`: the job's kind, the entries it writes into its run folder (all replaced by
  ``resume=False``) and the parameters that may change on resume; ``job.open_run(config)`` makes,
  resumes (after a configuration check) or resets the run folder, never touching a folder that is
  not a workbench run;
- :func:`locked`: the config's hardware check (``config.check_cpu_time``: a paper-scale job on a
  CPU stops before it starts, with its estimate), the job's threads (``workbench.threads``), then
  the run folder's lock for the whole job;
- :func:`main`: ``python -m workbench.<job> --flag value ...`` with ``--dry-run``; errors a user
  can fix (``EXPECTED_ERRORS``) end it with one line and exit 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from workbench import threads
from workbench.checkpoint import CheckpointError
from workbench.data.dqn_replay import DQNReplayError
from workbench.data.record import RecordError
from workbench.data.splits import StoreError
from workbench.devices import resolve_device
from workbench.fileio import DiskFullError, SymlinkError
from workbench.run import ResumeMismatch, Run, RunLock, RunLocked
from workbench.settings import parse_args
from workbench.transfer import TransferError

__all__ = ["EXPECTED_ERRORS", "Job", "JobConfig", "JobInputError", "check_inputs_outside", "locked", "main"]

class JobConfig(Protocol):
    """What the skeleton reads from a job's config."""

    @property
    def resume(self) -> bool: ...

    @property
    def device(self) -> str: ...

    @property
    def run_dir(self) -> str: ...

    def params(self) -> dict[str, Any]: ...

    def resolve(self) -> dict[str, Any]: ...

    def check_hardware(self, device_type: str) -> None: ...


@dataclass(frozen=True)
class Job:
    """A job's kind and what it owns in its run folder."""

    kind: str
    """Recorded in ``config.json`` ('pretrain', 'finetune', 'online')."""
    entries: tuple[str, ...]
    """What the job writes into its run folder (all of it is replaced by ``resume=False``)."""
    resumable: tuple[str, ...]
    """Parameters that may change when the run is resumed (recorded in ``history.jsonl``)."""

    def open_run(self, config: JobConfig, inputs: Sequence[str | Path] = ()) -> Run:
        """The run folder of ``config``, ready to write into.

        A new or empty folder becomes a run. A folder holding a run of the same configuration is
        resumed (changes to ``resumable`` fields are applied and recorded); any other difference
        stops here, before a weight is loaded, naming the fields. ``resume=False`` starts the run
        afresh, unless one of the job's ``inputs`` (its checkpoint, its dataset) lies inside the
        folder it would empty. A non-empty folder that is not a workbench run is never touched.
        """
        run_dir = Path(config.run_dir)
        if not config.resume:
            check_inputs_outside(run_dir, inputs)
        run = Run(run_dir)
        run.start(self.kind, config.params(), config.resolve(), resume=config.resume, may_change=self.resumable,
                  entries=self.entries)
        run.update_resolved({"threads": threads.in_effect()})  # this session's (a resume may differ)
        return run


@contextmanager
def locked(config: JobConfig) -> Iterator[None]:
    """Check the hardware (a paper-scale job on a CPU stops here), choose the job's threads, then
    hold the run folder's lock: a second job on the same folder fails at once, naming the holder."""
    config.check_hardware(resolve_device(config.device).type)
    threads.apply_job_threads()  # leave the CPUs other work keeps busy to it (workbench.threads)
    with RunLock(config.run_dir):
        yield


class JobInputError(ValueError):
    """A job's inputs and its output folder conflict (the reset would delete an input)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    JobInputError, ResumeMismatch, RunLocked, SymlinkError, DiskFullError, CheckpointError, TransferError, StoreError,
    DQNReplayError, RecordError, FileExistsError, FileNotFoundError, NotADirectoryError,
)
"""What a job's user can cause and fix (a folder in use or of another run, a link, a full disk, a
damaged checkpoint or dataset): its command line prints the message and exits 2, as for a bad
flag. Anything else is a bug and keeps its traceback."""


def check_inputs_outside(run_dir: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse to reset ``run_dir`` when an input of the job lies inside it (or is it): emptying
    the folder would delete what the job is about to read."""
    folder = run_dir.resolve()
    for given in inputs:
        path = Path(given).resolve()
        if path == folder or folder in path.parents:
            raise JobInputError(f"resume=False would empty {run_dir}, which holds this job's input {given}; "
                             "choose another output_dir (or copy the input elsewhere first)")


C = TypeVar("C")


def main(config_class: type[C], run: Callable[[C], Any], argv: Sequence[str] | None, prog: str) -> int:
    """A job's command line: flags for every config field; ``--dry-run`` prints the resolved
    configuration as JSON and touches no file; otherwise runs the job and prints its summary."""
    config, flags = parse_args(config_class, list(argv) if argv is not None else None, prog=prog,
                               extra_flags={"dry_run": "print the resolved configuration as JSON and exit"})
    if flags["dry_run"]:
        print(json.dumps({"params": config.params(), "resolved": config.resolve()},  # type: ignore[attr-defined]
                         indent=2, default=str))
        return 0
    try:
        result = run(config)
    except EXPECTED_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary, indent=2, default=str))
    return 0

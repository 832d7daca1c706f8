"""Ablation sweeps: declare a study, run every point as a papermill run, track it in one index.

A sweep file (YAML or JSON) names a base configuration, the factors and their levels, the seeds,
how points combine and where they run::

    name: feature_norm_cpu
    base: {model: resnet-tiny, games: "Pong,Breakout", preset: cpu}   # PretrainConfig fields
    factors:
      feature_norm: [true, false]     # an algorithm setting (goes into algo_args) or a config field
    seeds: [0, 1]
    combine: grid                     # grid (every combination) | zip (the i-th level of each)
    executor: {kind: local, parallel: 1}   # or kind: slurm (submitit), see ExecutorSpec

A factor is any reachable setting: a :class:`~workbench.config.PretrainConfig` field (``model``,
``lr``, ``planning_horizon``, ...) or a setting of the algorithm (``alpha``, ``feature_norm``,
``beta``, ...; ``algo_args.alpha`` says so explicitly). Every point's ``PretrainConfig`` is built
before anything runs, so a bad name or level stops the sweep with the valid choices.

Each point runs ``notebooks/02_pretrain.ipynb`` through papermill. Layout of a sweep folder
(default ``runs/sweeps/<name>``)::

    sweep.json             the index: point -> factor levels -> run folder -> status
    <point>/               the point's run folder (workbench.run.Run)
    <point>.ipynb          the point's executed notebook: its record
    status/<point>.json    written by the point itself: running (pid, host, job) | done | failed (the cell's error)

Re-running skips points that are done with the same parameters, and re-runs the others: an
interrupted point resumes from its run folder's last checkpoint (``resume=True``, the default).

Executors: ``local`` runs points in subprocesses, ``parallel`` at a time; ``slurm`` submits one
job per point (or one job array) through submitit, with the GPUs, CPUs, memory and time the
sweep file gives. ``cluster: local`` sends the same submitit path to submitit's local executor
(how the tests run the Slurm path without a cluster).

Command line::

    python -m workbench.sweep run SWEEP.yaml [--set preset=paper] [--parallel N] [--dry-run]
    python -m workbench.sweep status SWEEP.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from workbench.executors import EXECUTORS, ExecutorSpec, make_executor
from workbench.fileio import atomic_write_json
from workbench.paths import ROOT_ENV, checkout_notebook, project_root, resolve_path
from workbench.progress import progress_bar
from workbench.settings import from_params

# workbench.config, workbench.run and the algorithm registry are imported inside the functions that use
# them: every sweep point runs under a `python -m workbench.sweep _point` process for its whole length,
# and they would make it load torch (+2.7 s and +230 MB resident per point, for nothing it uses).

__all__ = ["COMBINES", "EXECUTORS", "ExecutorSpec", "Point", "Sweep", "check_root", "load_sweep", "main",
           "make_executor", "run_point", "run_sweep", "sweep_status"]

COMBINES = ("grid", "zip")
STATES = ("pending", "running", "done", "failed", "interrupted", "changed")
"""What ``status`` reports per point: not started; running now; finished with the sweep's current
parameters; its notebook raised (the cell's error is kept); its process died mid-run (re-running
resumes it); finished with other parameters than the sweep now gives (re-running continues it)."""

_NOTEBOOK = "notebooks/02_pretrain.ipynb"
# Set by the sweep itself for every point: not factors, not base values.
_SWEEP_OWNED = ("seed", "output_dir")


@dataclass(frozen=True)
class SweepFile:
    """The keys a sweep file may have (anything else is rejected, listing these)."""

    name: str = ""
    """Name of the sweep; its folder is runs/sweeps/<name> unless output_dir says otherwise."""
    description: str = ""
    """Free text: what the sweep asks (shown by status and in figure READMEs)."""
    base: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig parameters shared by every point."""
    factors: dict[str, Any] = field(default_factory=dict)
    """{setting: [levels]}: PretrainConfig fields or the algorithm's settings."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every combination of levels."""
    combine: str = "grid"
    """'grid': every combination of levels; 'zip': the i-th level of every factor together."""
    executor: dict[str, Any] = field(default_factory=dict)
    """Where points run (ExecutorSpec)."""
    output_dir: str = ""
    """The sweep's folder ('' = runs/sweeps/<name>)."""
    notebook: str = _NOTEBOOK
    """The notebook each point runs (default: the installed checkout's notebook 02; another path is
    code the sweep executes, resolved like any path on the command line)."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its factor levels and seed, and the validated configuration."""

    id: str
    levels: dict[str, Any]
    params: dict[str, Any]
    """The point's PretrainConfig parameters (papermill's parameters for its notebook)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.params["output_dir"])


@dataclass
class Sweep:
    """A validated sweep: every point's configuration was built without error."""

    name: str
    file: Path | None
    description: str
    factors: dict[str, list[Any]]
    seeds: list[int]
    combine: str
    executor: ExecutorSpec
    root: Path
    notebook: Path
    points: list[Point]
    base: dict[str, Any]

    @property
    def index_path(self) -> Path:
        return self.root / "sweep.json"

    def record_path(self, point: Point) -> Path:
        return self.root / f"{point.id}.ipynb"

    def status_path(self, point: Point) -> Path:
        return self.root / "status" / f"{point.id}.json"

    def point(self, point_id: str) -> Point:
        for p in self.points:
            if p.id == point_id:
                return p
        raise ValueError(f"sweep {self.name!r} has no point {point_id!r}; its points: "
                         f"{', '.join(p.id for p in self.points)}")


# ------------------------------------------------------------------------------------- declaring


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file {path} does not exist") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"sweep file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") \
            from None
    if not isinstance(doc, dict):
        raise ValueError(f"sweep file {path} must be a mapping with keys such as base, factors, seeds")
    return doc


def _setting_names(algo_names: set[str]) -> dict[str, list[str]]:
    from workbench.algos.base import get_algo  # noqa: PLC0415  (torch-free _point process)

    return {a: [f.name for f in dataclasses.fields(get_algo(a).settings_class)] for a in sorted(algo_names)}


def _slug(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def load_sweep(source: str | os.PathLike[str] | dict[str, Any], overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep (a file, or its mapping from a notebook cell).

    ``overrides`` replace ``base`` values (``--set preset=paper``). Every point's
    ``PretrainConfig`` is built here: an unknown factor, base key or level raises ``ValueError``
    naming the valid choices, before any point runs."""
    from workbench.config import PretrainConfig  # noqa: PLC0415  (torch-free _point process)

    file = None
    if isinstance(source, dict):
        doc = dict(source)
    else:
        file = resolve_path(source)
        doc = _read_file(file)
    spec = from_params(SweepFile, doc, what="sweep key")
    base = {**spec.base, **(overrides or {})}
    name = spec.name or (file.stem if file else "")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name or ""):  # a plain folder name: never '.', '..'
        raise ValueError(f"sweep name {name!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
                         "not starting with '.'")
    if spec.combine not in COMBINES:
        raise ValueError(f"unknown combine {spec.combine!r}; valid: {', '.join(COMBINES)}")
    for key in _SWEEP_OWNED:
        if key in base or key in spec.factors:
            raise ValueError(f"{key!r} is set by the sweep for every point (seeds: [...] and the sweep's output_dir); "
                             "remove it from base and factors")
    if not spec.seeds or not all(isinstance(s, int) and s >= 0 for s in spec.seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {spec.seeds!r}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ValueError(f"seeds repeat a seed: {spec.seeds}")
    if not spec.factors:
        raise ValueError("a sweep needs at least one factor: factors: {setting: [level, ...]}")
    factors: dict[str, list[Any]] = {}
    for key, levels in spec.factors.items():
        if not isinstance(levels, list) or not levels:
            raise ValueError(f"factor {key!r} needs a non-empty list of levels, got {levels!r}")
        if spec.combine == "grid" and len({json.dumps(v, sort_keys=True) for v in levels}) != len(levels):
            raise ValueError(f"factor {key!r} repeats a level: {levels}")
        factors[key] = levels
    if spec.combine == "zip" and len({len(v) for v in factors.values()}) > 1:
        raise ValueError("combine: zip needs the same number of levels for every factor, got "
                         + ", ".join(f"{k}: {len(v)}" for k, v in factors.items()))
    executor = from_params(ExecutorSpec, spec.executor, what="executor key")
    notebook = checkout_notebook("02_pretrain.ipynb") if spec.notebook == _NOTEBOOK else resolve_path(spec.notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} (the sweep's notebook) does not exist")
    root = resolve_path(spec.output_dir or f"runs/sweeps/{name}")

    # Which names are reachable: PretrainConfig fields, and each algorithm's settings.
    fields = [f.name for f in dataclasses.fields(PretrainConfig) if f.name not in _SWEEP_OWNED]
    combos = (list(itertools.product(*factors.values())) if spec.combine == "grid"
              else list(zip(*factors.values())))
    points: list[Point] = []
    for combo in combos:
        levels = dict(zip(factors, combo))
        params = {k: v for k, v in base.items()}
        params["algo_args"] = dict(params.get("algo_args") or {})
        # The algorithm of this point decides which settings exist.
        try:
            algo = PretrainConfig.from_params(**{k: v for k, v in {**params, **levels}.items()
                                                 if k in ("model", "algo")}).algo_name
        except ValueError as exc:
            raise ValueError(f"point {levels}: {exc}") from None
        settings = _setting_names({algo})[algo]
        for key, level in levels.items():
            setting = key.split(".", 1)[1] if key.startswith("algo_args.") else key
            if key == "algo_args" and isinstance(level, dict):
                params["algo_args"].update(level)
            elif key in fields and not key.startswith("algo_args."):
                params[key] = level
            elif setting in settings:
                params["algo_args"][setting] = level
            else:
                raise ValueError(
                    f"factor {key!r} is not a reachable setting of point {levels}: valid factors are the "
                    f"PretrainConfig fields ({', '.join(fields)}) and the {algo} settings ({', '.join(settings)}), "
                    "the latter also as algo_args.<name>")
        for seed in spec.seeds:
            pid = "_".join(f"{k.split('.')[-1]}-{_slug(v)}" for k, v in levels.items()) + f"_seed-{seed}"
            p = {**params, "seed": seed, "output_dir": str(root / pid)}
            try:
                config = PretrainConfig.from_params(**p)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"point {pid} is invalid: {exc}") from None
            points.append(Point(id=pid, levels={**levels, "seed": seed}, params=config.params()))
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise ValueError(f"points repeat ({sorted({i for i in ids if ids.count(i) > 1})}): two combinations of levels "
                         "are the same, or differ only in characters a folder name cannot keep")
    return Sweep(name=name, file=file, description=spec.description, factors=factors, seeds=list(spec.seeds),
                 combine=spec.combine, executor=executor, root=root, notebook=notebook, points=points, base=base)


# ------------------------------------------------------------------------------------- status


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody reaped yet (a zombie) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # missing, not JSON, not text
        return None
    return doc if isinstance(doc, dict) else None


def point_state(sweep: Sweep, point: Point) -> dict[str, Any]:
    """The point's status entry of the index (``state`` one of :data:`STATES`)."""
    doc = _read_status(sweep.status_path(point)) or {}
    state = doc.get("state", "pending")
    if state == "done":
        if doc.get("params") != point.params or not (point.run_dir / "summary.json").is_file():
            state = "changed"
    elif state == "running":
        if doc.get("host") == socket.gethostname() and not _pid_alive(int(doc.get("pid", 0))):
            state = "interrupted"
    entry = {"id": point.id, "levels": point.levels, "run_dir": str(point.run_dir),
             "notebook": str(sweep.record_path(point)), "state": state}
    for key in ("host", "pid", "job_id", "started", "finished", "seconds", "error"):
        if key in doc:
            entry[key] = doc[key]
    if state == "running" and doc.get("host") != socket.gethostname():
        entry["note"] = f"running on {doc.get('host')} (not checkable from here)"
    return entry


def check_root(sweep: Sweep) -> None:
    """Refuse a sweep folder the sweep may not write its index into: a file, or a folder whose
    ``sweep.json`` is not a workbench sweep index (it is never overwritten)."""
    root = sweep.root
    if root.exists() and not root.is_dir():
        raise ValueError(f"the sweep's output_dir {root} is a file, not a folder")
    index = sweep.index_path
    if index.is_symlink():
        raise ValueError(f"{index} is a symbolic link; the sweep never writes through one. Remove it or choose "
                         "another output_dir")
    if index.exists():
        doc = None if index.is_dir() else _read_status(index)
        if doc is None or not isinstance(doc.get("points"), list) or "name" not in doc:
            raise ValueError(f"{index} exists and is not a workbench sweep index; refusing to overwrite it. Choose "
                             "another output_dir for the sweep")


def sweep_status(sweep: Sweep, *, write: bool = True) -> dict[str, Any]:
    """The sweep index (and, by default, write it to ``sweep.json``)."""
    points = [point_state(sweep, p) for p in sweep.points]
    counts = {s: sum(p["state"] == s for p in points) for s in STATES}
    index = {
        "name": sweep.name, "file": str(sweep.file) if sweep.file else None, "description": sweep.description,
        "root": str(sweep.root), "notebook": str(sweep.notebook), "factors": sweep.factors, "seeds": sweep.seeds,
        "combine": sweep.combine, "base": sweep.base, "executor": dataclasses.asdict(sweep.executor),
        "counts": {k: v for k, v in counts.items() if v}, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "points": points,
    }
    if write:
        sweep.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sweep.index_path, index)
    return index


def format_status(index: dict[str, Any]) -> str:
    """``status``'s report: counts, then one line per point (with the failing cell's error)."""
    lines = [f"sweep {index['name']} ({index['root']}): "
             + ", ".join(f"{n} {s}" for s, n in index["counts"].items())]
    for p in index["points"]:
        levels = ", ".join(f"{k}={v}" for k, v in p["levels"].items())
        extra = f" {p['seconds']:.0f} s" if p.get("seconds") is not None else ""
        lines.append(f"  {p['state']:<11} {p['id']}  [{levels}]{extra}")
        if p.get("error"):
            e = p["error"]
            where = f"cell {e['cell']}" if e.get("cell") is not None else "notebook"
            lines.append(f"              {where}: {e.get('ename')}: {e.get('evalue')}")
        if p.get("note"):
            lines.append(f"              {p['note']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- one point


def point_job(sweep: Sweep, point: Point) -> dict[str, Any]:
    """What a point's process needs (plain JSON: it crosses a process or a Slurm job)."""
    # root: where the sweep resolved its paths; the point's kernel resolves the params' relative
    # paths (a dataset) against the same folder, wherever its notebook lies.
    return {"id": point.id, "notebook": str(sweep.notebook), "record": str(sweep.record_path(point)),
            "status": str(sweep.status_path(point)), "params": point.params, "root": str(project_root())}


def _job_id() -> str | None:
    if "SLURM_JOB_ID" in os.environ:
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    if os.environ.get("SUBMITIT_EXECUTOR"):  # a submitit job on another backend (its local executor)
        return str(submitit.JobEnvironment().job_id)
    return None


def run_point(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one point's notebook with papermill; write its status file before and after.

    Runs wherever the executor put it (a local subprocess, a Slurm job). Returns the final
    status; a notebook error is recorded (cell, exception name and message), not raised."""
    import papermill  # noqa: PLC0415  (papermill: optional extra)

    status_path = Path(job["status"])
    started = time.time()
    status: dict[str, Any] = {"id": job["id"], "state": "running", "pid": os.getpid(),
                              "host": socket.gethostname(), "job_id": _job_id(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": job["params"]}
    status_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(status_path, status)
    notebook = Path(job["notebook"])
    if job.get("root"):
        os.environ[ROOT_ENV] = job["root"]  # the kernel inherits it
    try:
        papermill.execute_notebook(str(notebook), job["record"], parameters=job["params"], kernel_name="python3",
                                   cwd=str(notebook.parent), progress_bar=False)
        status["state"] = "done"
    except papermill.PapermillExecutionError as exc:
        status["state"] = "failed"
        status["error"] = {"cell": exc.cell_index, "ename": exc.ename, "evalue": str(exc.evalue)[:2000],
                           "source": exc.source[:500]}
    except Exception as exc:  # the kernel died, the notebook could not be written, ...: recorded, not raised
        status["state"] = "failed"
        status["error"] = {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)[:2000]}
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    status["seconds"] = round(time.time() - started, 1)
    atomic_write_json(status_path, status)
    return status


# ------------------------------------------------------------------------------------- running


def _check_resumable(sweep: Sweep, points: Sequence[Point]) -> None:
    """Before anything runs: every existing run folder must accept its point's configuration."""
    from workbench.config import RESUMABLE_FIELDS, PretrainConfig  # noqa: PLC0415  (torch-free _point process)
    from workbench.run import ResumeMismatch, Run, check_writable  # noqa: PLC0415  (torch-free _point process)

    problems = []
    for p in points:
        run = Run(p.run_dir)
        try:
            check_writable(run.path)
            if run.is_marked() and run.config_path.is_file() and p.params.get("resume", True):
                config = PretrainConfig.from_params(**p.params)
                run.check_resume("pretrain", config.params(), config.resolve(), RESUMABLE_FIELDS)
        except (ResumeMismatch, FileExistsError, NotADirectoryError, ValueError) as exc:
            problems.append(f"{p.id}: {exc}")
    if problems:
        raise ValueError("these points cannot run into their existing folders (nothing was started):\n"
                         + "\n".join(problems))


#: thread-count variables of the math libraries a point's kernel uses (torch reads OMP's at start-up)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def point_environment(parallel: int, environ: dict[str, str], cpus: int) -> dict[str, str]:
    """The environment of one local point: the CPUs shared out between the ``parallel`` points.

    Each torch process otherwise starts one thread per core, and ``parallel`` of them spin against
    each other: measured on 2 cores with 2 points at once, a resnet-tiny training step took 1.63 s
    instead of about 0.03 s. A thread count the user set is kept."""
    env = dict(environ)
    if parallel > 1:
        share = str(max(1, cpus // parallel))
        for name in THREAD_VARIABLES:
            env.setdefault(name, share)
    return env


def _local(sweep: Sweep, jobs: list[dict[str, Any]], parallel: int, tick: Any) -> None:
    """Each point in its own subprocess (a killed point leaves the others alone), ``parallel`` at a time."""
    env = point_environment(parallel, dict(os.environ), os.cpu_count() or 1)

    def one(job: dict[str, Any]) -> str:
        proc = subprocess.run([sys.executable, "-m", "workbench.sweep", "_point", json.dumps(job)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0 and (_read_status(Path(job["status"])) or {}).get("state") != "failed":
            atomic_write_json(Path(job["status"]), {
                "id": job["id"], "state": "failed", "params": job["params"],
                "error": {"cell": None, "ename": f"exit status {proc.returncode}", "evalue": proc.stderr[-2000:]}})
        return str(job["id"])

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in as_completed([pool.submit(one, j) for j in jobs]):
            tick(future.result())


def _submitit(sweep: Sweep, jobs: list[dict[str, Any]], wait: bool, tick: Any) -> list[str]:
    """Submit through submitit (Slurm, or its local executor); returns the job ids."""
    ex = sweep.executor
    executor = make_executor(ex, sweep.root / "submitit" / "%j", f"sweep-{sweep.name}")
    if ex.array:
        submitted = executor.map_array(run_point, jobs)
    else:
        submitted = [executor.submit(run_point, j) for j in jobs]
    ids = [str(j.job_id) for j in submitted]
    if wait:
        by_job = {j.job_id: job for j, job in zip(submitted, jobs)}
        for done in submitit.helpers.as_completed(submitted, poll_frequency=1.0):
            job = by_job[done.job_id]
            try:
                done.result()
            except Exception as exc:  # the job itself died (time limit, node failure): keep the reason
                if (_read_status(Path(job["status"])) or {}).get("state") != "failed":
                    atomic_write_json(Path(job["status"]), {
                        "id": job["id"], "state": "failed", "params": job["params"], "job_id": str(done.job_id),
                        "error": {"cell": None, "ename": type(exc).__name__, "evalue": str(exc)[-2000:]}})
            tick(job["id"])
    return ids


def run_sweep(sweep: Sweep, *, parallel: int | None = None, wait: bool = True, progress: bool = True,
              dry_run: bool = False) -> dict[str, Any]:
    """Run every point that is not done; returns the index (also written to ``sweep.json``).

    Points done with the same parameters are skipped; interrupted, failed and changed points
    run again (their run folders resume from the last checkpoint). Points running now are left
    alone. ``dry_run`` only validates. Every check (the sweep's folder, each point's run folder)
    comes before the first write: a refused sweep leaves its folder, ``sweep.json`` included, as it was."""
    check_root(sweep)
    index = sweep_status(sweep, write=False)
    states = {p["id"]: p["state"] for p in index["points"]}
    todo = [p for p in sweep.points if states[p.id] in ("pending", "failed", "interrupted", "changed")]
    if dry_run:
        return index
    if not todo:
        return sweep_status(sweep)
    _check_resumable(sweep, todo)
    jobs = [point_job(sweep, p) for p in todo]
    for job in jobs:  # a point re-run after a failure starts with no stale error in the index
        Path(job["status"]).unlink(missing_ok=True)

    bar = progress_bar(total=len(sweep.points), initial=len(sweep.points) - len(todo), desc=f"sweep {sweep.name}",
                       unit="point", disable=not progress)

    def tick(point_id: str) -> None:
        state = point_state(sweep, sweep.point(point_id))["state"]
        bar.set_postfix_str(f"{point_id}: {state}")
        bar.update(1)
        sweep_status(sweep)

    try:
        sweep_status(sweep)
        if sweep.executor.kind == "local":
            _local(sweep, jobs, parallel or sweep.executor.parallel, tick)
        else:
            ids = _submitit(sweep, jobs, wait, tick)
            if not wait and progress:
                print(f"submitted {len(ids)} job(s): {', '.join(ids)}; `python -m workbench.sweep status` follows them")
    finally:
        bar.close()
    return sweep_status(sweep)


# ------------------------------------------------------------------------------------- command line


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {item!r}: give name=value, e.g. --set preset=paper")
        out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.sweep", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every point that is not done (skips done points, resumes the others)")
    status = sub.add_parser("status", help="what is done, running, failed (with the failing cell's error)")
    for p in (run, status):
        p.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                       help="replace a base value, e.g. --set preset=paper (repeatable)")
        p.add_argument("--json", action="store_true", help="print the index as JSON")
    run.add_argument("--parallel", type=int, default=None, help="local executor: points at a time")
    run.add_argument("--dry-run", action="store_true", help="validate, print the points and their state, run nothing")
    run.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    point = sub.add_parser("_point", help=argparse.SUPPRESS)
    point.add_argument("job")
    args = parser.parse_args(argv)
    if args.command == "_point":
        run_point(json.loads(args.job))
        return 0
    try:
        sweep = load_sweep(args.sweep, _overrides(args.overrides))
        if args.command == "run":
            if args.parallel is not None and args.parallel < 1:
                raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
            index = run_sweep(sweep, parallel=args.parallel, wait=not args.no_wait, dry_run=args.dry_run)
        else:
            try:
                check_root(sweep)
                ours = sweep.root.is_dir()
            except ValueError:  # status reads; it never overwrites what is not its index
                ours = False
            index = sweep_status(sweep, write=ours)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(index, indent=2) if args.json else format_status(index))
    failed = index["counts"].get("failed", 0) + index["counts"].get("interrupted", 0)
    return 1 if args.command == "run" and not args.dry_run and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall and CPU time of the README's main job and its headline follow-up, with their defaults.

Runs ``python -m workbench.pipeline`` (the job notebook 02 runs, with notebook 02's defaults) in a
fresh temporary project: first the main job (``resnet-tiny``: record, build, train, evaluate),
then ``--model resnet101`` beside it (which reuses the main job's recording). Each is a child
process; CPU time is its user + system time (``resource.getrusage(RUSAGE_CHILDREN)``). Run it on an
idle machine: the README quotes its numbers. Prints one JSON object.

    python benchmarks/bench_main_job.py [--models resnet-tiny resnet101]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_job(project: Path, model: str) -> dict[str, object]:
    env = {**os.environ, "WORKBENCH_ROOT": str(project), "TQDM_DISABLE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "workbench.pipeline", "--model", model], cwd=project, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{model}: exit {out.returncode}\n{out.stderr[-2000:]}")
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    run_dir = Path(summary["run_dir"])
    disk = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink())
    return {"model": model, "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "recorded": (run_dir / "data" / "replay").is_dir(), "run_disk_mb": round(disk / 2**20, 1),
            "verdict": summary.get("verdict")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet-tiny", "resnet101"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        jobs = [run_job(project, m) for m in args.models]
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "load_avg_at_end": os.getloadavg(), "jobs": jobs},
                     indent=1))


if __name__ == "__main__":
    main()

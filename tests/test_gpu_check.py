"""`benchmarks/gpu_check.py --smoke` runs end to end on the CPU: every section answers with finite
numbers, no section failed, and the correctness checks hold at smoke size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("peak", "correctness", "fixes", "train_speed", "sampler", "planner", "evaluator")


def numbers(x, path="$"):
    """Every number in a JSON tree, with its path."""
    if isinstance(x, bool):
        return
    if isinstance(x, (int, float)):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{path}[{i}]")


@pytest.mark.slow
def test_smoke_run_answers_every_section_and_its_checks_hold(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--budget-s", "600"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for name in SECTIONS:
        assert isinstance(r.get(name), dict), name
        assert "error" not in r[name] and "skipped" not in r[name], (name, r[name])
    # JSON has no NaN/Inf (they would be null); every number is finite
    nulls = [k for k, v in r.items() if v is None]
    assert not nulls, nulls
    assert all(math.isfinite(v) for _, v in numbers(r))

    c = r["correctness"]
    assert [x["model"] for x in c["bf16_vs_fp32"]] == ["resnet-tiny", "jowa-tiny"]
    for chk in c["bf16_vs_fp32"]:
        assert chk["passed"] and chk["all_finite"], chk
        assert chk["loss_rel_err"] > 0  # bf16 really ran: the two precisions differ
        assert chk["grad_cosine"] > 0.98
    assert c["kv_cache"]["fp32"]["passed"] and c["kv_cache"]["bf16"]["passed"], c["kv_cache"]
    assert c["kv_cache"]["bf16"]["rel_err"] > c["kv_cache"]["fp32"]["rel_err"]  # the bf16 pass was bf16
    assert [d["backend"] for d in c["ddp"]] == ["gloo", "gloo"] and all(d["passed"] for d in c["ddp"]), c["ddp"]

    f = r["fixes"]
    # the old loop read the finite flag every step; the new one reads only on log steps
    assert f["before"]["host_reads"].get("item", 0) >= f["steps_per_rep"]
    assert f["after"]["host_reads_per_step"] < f["before"]["host_reads_per_step"]
    assert f["trainer_loop"]["host_reads_per_step"] < 1

    speed = r["train_speed"]["models"]
    assert set(speed) == {"resnet-tiny", "jowa-tiny"}
    for row in speed.values():
        # Under 1 on a quiet machine; the CPU smoke run times the matrix peak and the steps at
        # different moments, so a busy neighbour (the other test worker) can push it a little
        # above. A wrong FLOP count is off by far more.
        assert row["flops_per_step"] > 0 and 0 < row["best_mfu"] < 2
    assert speed["resnet-tiny"]["compiled"]["backend"] == "aot_eager"
    assert r["sampler"]["workers"] and 0 <= r["sampler"]["best_wait_fraction"] < 1
    assert r["planner"]["decisions_per_s"]["planner"] > 0 and r["evaluator"]["eval_steps_per_s"] > 0
    same, checked = r["planner"]["same_actions_as_planner"]["planner_1env"].split("/")
    assert same == checked != "0"  # one env at a time decides what the batched search decides

    # the table is printed last, one row per verdict; no correctness row misses
    table = proc.stdout.strip().splitlines()
    assert table[-len(r["verdicts"]) - 1].split()[:2] == ["section", "what"]
    assert [v for v in r["verdicts"] if v["section"] == "correctness" and v["verdict"] != "ok"] == []


def test_a_wheel_rebuilt_from_the_installed_copy_installs_offline_and_imports(tmp_path):
    """rliable 1.2.0 has no wheel in the registry: prepare_device_wheels rebuilds one from the
    copy installed here; it must install with pip --no-index and import from there."""
    import importlib.metadata as md

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import prepare_device_wheels as pdw
    finally:
        sys.path.pop(0)
    version = md.version("rliable")
    wheel = pdw.wheel_from_installed("rliable", version, tmp_path)
    assert wheel.name == f"rliable-{version}-py3-none-any.whl"
    installed_reqs = {pdw.normalize(r.split()[0].split(";")[0].split("=")[0].split(">")[0].split("<")[0])
                      for r in md.requires("rliable") or [] if "extra ==" not in r}
    assert set(pdw.requirements(wheel)) == installed_reqs
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=120)
    probe = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
                            "import importlib.util as u; print(u.find_spec('rliable').origin)"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.strip().startswith(str(site))

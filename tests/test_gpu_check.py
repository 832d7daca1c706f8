"""`benchmarks/gpu_check.py --smoke` runs end to end on the CPU: every section answers with finite
numbers, no section failed, and the correctness checks hold at smoke size. Its optional
``released_jowa`` section converts and evaluates fixture JOWA files (``test_convert_jowa``'s
generator: the released keys and shapes, random values) when they are given, beside the
released scores, and records ``skipped: no files`` when they are not."""

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


def _gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


def test_released_jowa_section_is_skipped_without_files_and_where_the_budget_is_short(tmp_path, monkeypatch):
    gc = _gpu_check()
    for var in gc.JOWA_ENV.values():
        monkeypatch.delenv(var, raising=False)
    files = gc.released_files({})
    assert isinstance(files, str) and files.startswith("no files")
    missing = gc.released_files({"tokenizer": str(tmp_path / "tokenizer.pt"), "world_model": str(tmp_path / "w.pt")})
    assert isinstance(missing, str) and missing.startswith("no files") and "tokenizer.pt" in missing
    monkeypatch.setenv("JOWA_RUN", str(tmp_path))  # the environment names the files where no option does
    assert gc.released_files({}) == {"run": tmp_path.resolve()}

    sz = gc.SIZES["smoke"]
    r = gc.run_check(sz, gc.torch.device("cpu"), ("released_jowa",), 60.0, files)
    assert r["released_jowa"] == {"skipped": files}
    assert ["released_jowa", "section", files, "", "-"] == [
        list(v.values()) for v in r["verdicts"] if v["section"] == "released_jowa"][0]
    # files given but no time left: skipped for the budget, as every section
    r = gc.run_check(sz, gc.torch.device("cpu"), ("released_jowa",), 0.0, {"run": tmp_path})
    assert r["released_jowa"]["skipped"].startswith("time budget")


@pytest.mark.slow
def test_released_jowa_section_converts_and_evaluates_the_files_beside_the_released_scores(tmp_path):
    from test_convert_jowa import SIZE_DIMS, materialize, ref_tokenizer_layout, ref_world_layout, save

    from workbench.reference import released_jowa_means

    tok = save(materialize(ref_tokenizer_layout(), seed=1, cheap=("lpips.",)), tmp_path / "tokenizer.pt")
    wm = save(materialize(ref_world_layout(*SIZE_DIMS["40m"]), seed=2), tmp_path / "JOWA_40M.pt")
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "JOWA_RUN")}
    env.update(JOWA_TOKENIZER=str(tok), JOWA_WORLD_MODEL=str(wm))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--sections", "released_jowa"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    j = json.loads(out.read_text())["released_jowa"]
    assert "error" not in j and "skipped" not in j, j
    assert j["source"] == {"tokenizer": str(tok), "world_model": str(wm)} and j["convert_s"] > 0
    assert j["model"] == "jowa-40m-ref" and j["released_model"] == "JOWA-40M" and j["games"] == ["Assault"]
    # the paper's protocol: H = 2, its K for a game of 7 actions, epsilon 0.001, the eval environments
    assert (j["horizon"], j["beam_width"], j["epsilon"]) == (2, {"Assault": 2}, 0.001)
    assert j["probe_decisions_per_s"] > 0 and 1 <= j["max_agent_steps"] < j["protocol_max_agent_steps"] == 27_000
    row = j["per_game"]["Assault"]
    assert len(row["scores"]) == 1 and row["ours_mean"] == row["scores"][0] and math.isfinite(row["ours_mean"])
    assert row["released_mean"] == pytest.approx(released_jowa_means("40m")["Assault"])
    assert row["truncated"] == [True] and j["comparable_to_papers"] is False and "capped" in j["note"]
    # printed as notebook 05 prints it, and a table row beside the released score
    assert "released JOWA-40M beside ours" in proc.stdout and j["lines"][0].startswith("released JOWA-40M")
    table_row = [line for line in proc.stdout.splitlines() if line.startswith("released_jowa")]
    assert len(table_row) == 1 and "Assault" in table_row[0] and f"released {row['released_mean']:.1f}" in table_row[0]

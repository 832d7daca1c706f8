"""The README stays true: every ```bash block runs, in order, in a fresh project folder.

Marker convention (an HTML comment on the line just before a block, invisible on GitHub):

- ``<!-- readme-test: skip: REASON -->``: not run (installs, GPUs, downloads, servers); the reason
  is required.
- ``<!-- readme-test: add: ARGS -->``: ARGS are appended to every command of the block (tiny sizes,
  ``--dry-run``).
- ``<!-- readme-test: replace: OLD => NEW; OLD2 => NEW2 -->``: text replacements in the block
  (each OLD must occur, so a stale marker fails).

Blocks run with bash in a temporary project (``pyproject.toml`` and ``notebooks/`` copied) with
``WORKBENCH_ROOT`` pointing at it, so relative paths such as ``runs/pretrain-resnet-tiny`` land
there and later blocks use what earlier ones made (the metrics and video commands read the main
job's run).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|add|replace):\s*(.*?)\s*-->")
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def readme_blocks(text: str) -> list[dict]:
    """Every bash block with its directive: {'line', 'code', 'kind', 'arg'}."""
    blocks = []
    for m in FENCE.finditer(text):
        before = [ln for ln in text[: m.start()].splitlines() if ln.strip()]
        marker = MARKER.search(before[-1]) if before else None
        blocks.append({"line": text[: m.start()].count("\n") + 1, "code": m.group(1),
                       "kind": marker.group(1) if marker else "run", "arg": marker.group(2) if marker else ""})
    return blocks


def commands(code: str) -> list[str]:
    """Logical commands of a block (backslash continuations joined), comments stripped."""
    out = []
    for cmd in code.replace("\\\n", " ").splitlines():
        cmd = cmd.split("  #")[0].strip()
        if cmd and not cmd.startswith("#"):
            out.append(cmd)
    return out


def prepared(block: dict) -> list[str]:
    code = block["code"]
    if block["kind"] == "replace":
        for pair in block["arg"].split(";"):
            old, new = (p.strip() for p in pair.split("=>"))
            assert old in code, f"README line {block['line']}: marker replaces {old!r}, which the block lacks"
            code = code.replace(old, new)
    cmds = commands(code)
    if block["kind"] == "add":
        cmds = [f"{c} {block['arg']}" for c in cmds]
    return cmds


def test_markers_are_well_formed_and_most_blocks_run():
    blocks = readme_blocks(README.read_text())
    for b in blocks:
        if b["kind"] == "skip":
            assert len(b["arg"]) > 5, f"README line {b['line']}: a skipped block needs its reason"
    runnable = [b for b in blocks if b["kind"] != "skip"]
    assert len(runnable) >= 3 and sum(len(prepared(b)) for b in runnable) >= 6


def test_inline_papermill_yaml_values_parse_to_parameters():
    """`-y "name: value"` is the form papermill accepts (YAML mapping); `-y games "[...]"` is not."""
    from workbench.config import PretrainConfig

    text = README.read_text()
    found = re.findall(r'-y "([^"]+)"', text)
    assert found, "the README shows no -y example"
    for value in found:
        doc = yaml.safe_load(value)
        assert isinstance(doc, dict), f"-y {value!r} is not a YAML mapping"
        PretrainConfig.from_params(**doc)  # names and types the pretraining notebook accepts
    assert not re.search(r"-y \w+ ", text), "a -y flag followed by a bare name (papermill reads it as YAML)"


@pytest.mark.slow
def test_every_readme_command_block_runs(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "pyproject.toml", root)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    env = dict(os.environ, WORKBENCH_ROOT=str(root), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    ran = []
    for block in readme_blocks(README.read_text()):
        if block["kind"] == "skip":
            continue
        for cmd in prepared(block):
            proc = subprocess.run(["bash", "-c", cmd], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, (f"README line {block['line']}: {cmd}\n--- stdout\n{proc.stdout[-3000:]}"
                                          f"\n--- stderr\n{proc.stderr[-3000:]}")
            ran.append((shlex.split(cmd)[:3], proc.stdout))
    # What the blocks leave is what the README says they leave.
    run = root / "runs" / "pretrain-resnet-tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["comparable_to_papers"] is False and summary["eval_max_steps"] == 20
    assert (root / "data" / "rec" / "Pong" / "1" / "replay_logs").is_dir()
    assert (root / "data" / "rec" / "Breakout" / "1" / "replay_logs").is_dir()  # "Pong,Breakout" split
    assert list((root / "videos").glob("*.mp4"))
    assert not (root / "runs" / "sql-r50").exists()  # --dry-run touches no file
    metrics_out = next(out for argv, out in ran if argv[:3] == ["python", "-m", "workbench.metrics"])
    doc = json.loads(metrics_out)
    (method,) = doc
    assert doc[method]["comparable_to_papers"] is False and "iqm" in doc[method]


def test_metrics_cli_reads_the_evaluators_scores_json(tmp_path, capsys):
    """`python -m workbench.metrics eval/scores.json`: episodes are the runs; IQM checked against
    scipy's 25%-trimmed mean of the human-normalized episode scores; the file's flags pass through."""
    from scipy.stats import trim_mean

    from workbench import metrics
    from workbench.metrics import reference_scores

    scores = {"Breakout": [10.0, 20.0, 30.0, 40.0], "Pong": [-21.0, -20.0, -19.0, -15.0]}
    doc = {"per_game": {g: {"scores": s, "mean": sum(s) / 4, "truncated": [True] * 4} for g, s in scores.items()},
           "max_agent_steps": 1000, "truncated_episodes": 8, "comparable_to_papers": False, "note": "capped"}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(doc))
    assert metrics.main([str(path), "--reps", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = reference_scores()
    hns = [(s - ref[g]["random"]) / (ref[g]["human"] - ref[g]["random"]) for g, v in scores.items() for s in v]
    assert out["scores"]["iqm"] == pytest.approx(trim_mean(hns, 0.25))
    assert out["scores"]["comparable_to_papers"] is False and out["scores"]["truncated_episodes"] == 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    assert metrics.main([str(bad)]) == 2
    assert "neither an evaluator scores JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        metrics.main(["--help"])
    assert "evaluator scores JSON" in capsys.readouterr().out

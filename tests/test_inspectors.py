"""Headless inspector tests: sliders drive the FigureWidgets; rollouts round-trip without pickles."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from workbench.viz.inspectors import PlannerInspector, QInspector, explorer
from workbench.viz.params import AnalysisParams, ExplorerParams
from workbench.viz.rollout import Rollout, synthetic_rollout


def _decode(source: str) -> np.ndarray:
    data = base64.b64decode(source.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def rollout() -> Rollout:
    return synthetic_rollout(12, game="Breakout", atoms=21, horizon=2, beam=2, seed=3)


def _assert_q_step(insp: QInspector, r: Rollout, t: int) -> None:
    a = len(r.action_names)
    for i in range(a):
        np.testing.assert_allclose(insp.q_fig.data[i].y, r.q_probs[t, i], rtol=1e-6)
    q = (r.q_probs[t].astype(np.float64) * r.support.astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(insp.q_fig.data[a].x, q, rtol=1e-5)
    chosen = int(r.actions[t])
    assert insp.q_fig.data[chosen].line.width == max(d.line.width for d in insp.q_fig.data[:a])
    assert r.action_names[chosen] in insp.q_fig.layout.title.text
    np.testing.assert_array_equal(_decode(insp.frame_fig.data[0].source)[:, :, 0], r.frames[t])
    assert f"step {t}/" in insp.caption.value and r.action_names[chosen] in insp.caption.value


def test_q_inspector_follows_the_slider(rollout):
    insp = QInspector(rollout)
    assert insp.step.max == len(rollout) - 1
    _assert_q_step(insp, rollout, 0)
    for t in (7, 2, len(rollout) - 1):
        insp.step.value = t
        _assert_q_step(insp, rollout, t)
    score = float(np.sum(rollout.rewards[: len(rollout)]))
    assert f"score {score:g}" in insp.caption.value


def test_q_inspector_without_distributions_shows_q_bars(rollout):
    r = Rollout(game=rollout.game, action_names=rollout.action_names, frames=rollout.frames,
                actions=rollout.actions, rewards=rollout.rewards,
                q_values=np.arange(len(rollout) * 4, dtype=np.float32).reshape(len(rollout), 4))
    insp = QInspector(r)
    insp.step.value = 5
    np.testing.assert_allclose(insp.q_fig.data[0].x, [20, 21, 22, 23])


def test_planner_inspector_tree_and_frames_follow_the_slider(rollout):
    insp = PlannerInspector(rollout)
    for t in (4, 0, len(rollout) - 1):
        insp.step.value = t
        tree = rollout.trees[t]
        ids = [int(row[0]) for row in insp.tree_fig.data[1].customdata]
        assert ids == [n["id"] for n in tree["nodes"]]
        assert [int(x) for x in insp.tree_fig.data[1].x] == [n["depth"] for n in tree["nodes"]]
        n_edges = sum(1 for n in tree["nodes"] if n["parent"] != -1)
        assert len(insp.tree_fig.data[0].x) == 3 * n_edges
        images = [_decode(d.source)[:, :, 0] for d in insp.frames_fig.data]
        for k in range(2):
            want_real = rollout.frames[t + 1 + k] if t + 1 + k < len(rollout) else np.zeros((84, 84), np.uint8)
            np.testing.assert_array_equal(images[k], want_real)
            np.testing.assert_array_equal(images[2 + k], rollout.predicted_frames[t, k])
        assert f"step {t}:" in insp.caption.value


def test_explorer_shares_one_slider(rollout):
    box, q, p = explorer(rollout)
    assert p is not None and p.step is q.step
    q.step.value = 9
    _assert_q_step(q, rollout, 9)
    assert [int(r[0]) for r in p.tree_fig.data[1].customdata] == [n["id"] for n in rollout.trees[9]["nodes"]]
    no_planner = synthetic_rollout(5, planner=False)
    _, _, none = explorer(no_planner)
    assert none is None
    with pytest.raises(ValueError, match="search trees"):
        PlannerInspector(no_planner)


def test_rollout_save_load_roundtrip_without_pickles(rollout, tmp_path):
    d = rollout.save(tmp_path / "r")
    with np.load(d / "rollout.npz", allow_pickle=False) as z:  # would raise on object arrays
        assert z["frames"].dtype == np.uint8
    doc = json.loads((d / "rollout.json").read_text())
    assert doc["game"] == "Breakout" and len(doc["trees"]) == len(rollout)
    back = Rollout.load(d)
    np.testing.assert_array_equal(back.frames, rollout.frames)
    np.testing.assert_array_equal(back.actions, rollout.actions)
    np.testing.assert_allclose(back.q_probs, rollout.q_probs)
    np.testing.assert_array_equal(back.predicted_frames, rollout.predicted_frames)
    assert back.trees == rollout.trees and back.action_names == rollout.action_names


def test_rollout_validation_messages(rollout):
    with pytest.raises(ValueError, match="q_probs must have shape"):
        Rollout(game="Pong", action_names=["A", "B"], frames=rollout.frames, actions=np.zeros(12),
                rewards=np.zeros(12), q_probs=np.ones((12, 3, 5)), support=np.zeros(5))
    with pytest.raises(ValueError, match="0..1"):
        Rollout(game="Pong", action_names=["A", "B"], frames=rollout.frames,
                actions=np.full(12, 2), rewards=np.zeros(12))


def test_notebook_params_reject_unknown_and_invalid_values():
    from workbench.config import namespace_params

    ns = {"source": "synthetic", "game": "ms_pacman", "In": [], "_": 1, "np": np}
    assert ExplorerParams.from_params(**namespace_params(ns)).game == "ms_pacman"
    with pytest.raises(ValueError, match=r"unknown parameter.*'gaem'.*did you mean 'game'"):
        ExplorerParams.from_params(**namespace_params({**ns, "gaem": "Pong"}))
    with pytest.raises(ValueError, match="valid choices are 'checkpoint', 'rollout', 'synthetic'"):
        ExplorerParams.from_params(source="replay")
    with pytest.raises(ValueError, match="needs checkpoint"):
        ExplorerParams.from_params(source="checkpoint", checkpoint="")
    with pytest.raises(ValueError, match="unknown game"):
        ExplorerParams.from_params(source="synthetic", game="Pongg")
    with pytest.raises(ValueError, match="reps"):
        AnalysisParams.from_params(reps=5)


@pytest.mark.parametrize("name, params_cls", [("07_explore_checkpoint", ExplorerParams),
                                              ("06_analysis", AnalysisParams)])
def test_notebooks_are_papermill_ready_and_match_their_params(name, params_cls):
    import dataclasses
    from pathlib import Path

    import nbformat
    import papermill

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert all("def " not in c.source and "class " not in c.source for c in code), "no helpers in notebooks"
    inspected = papermill.inspect_notebook(str(path))
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    assert set(inspected) == set(fields)
    for k, p in inspected.items():  # notebook defaults equal the dataclass defaults
        assert eval(p["default"]) == fields[k].default, k
    assert "from_params(**namespace_params(globals()))" in code[1].source


def test_rollout_from_params_sources(tmp_path):
    from workbench.viz.rollout import rollout_from_params

    p = ExplorerParams.from_params(source="synthetic", game="Breakout", max_steps=6, seed=2,
                                   out_dir=str(tmp_path / "explore"))
    made = rollout_from_params(p)
    assert len(made) == 6 and made.game == "Breakout"
    assert (tmp_path / "explore" / "rollout" / "rollout.npz").is_file()
    back = rollout_from_params(ExplorerParams.from_params(
        source="rollout", rollout_path=str(tmp_path / "explore" / "rollout"), game="Breakout"))
    np.testing.assert_array_equal(back.frames, made.frames)
    with pytest.raises(FileNotFoundError, match="no workbench checkpoint"):
        rollout_from_params(ExplorerParams.from_params(source="checkpoint", checkpoint=str(tmp_path / "none")))

"""Headless: notebook 06's ablation explorer shows every view through *synced widget state*.

What a JupyterLab tab reload (or a second view of the output) restores is each widget's state
(``get_state()``), not the messages sent since. ``go.FigureWidget`` kept only the figure it was built
with in its state, so after a reload the explorer drew its first choice while the controls showed
the current one (issue 29). These tests read back the state of every widget under
``explorer.widget`` and check that it carries the current choice's figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workbench import metrics as M
from workbench.viz.ablation import VIEWS, AblationData, AblationExplorer
from workbench.viz.analysis import RunInfo

GAMES = ("Breakout", "Pong")
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _data() -> AblationData:
    """Two levels of one factor, two seeds each, evaluated on two games, with logged losses."""
    rng = np.random.default_rng(0)
    runs, levels = [], []
    for norm in (True, False):
        for seed in (0, 1):
            per_game = {}
            for g in GAMES:
                episodes = [float(v) for v in rng.uniform(0, 30, size=3)]
                per_game[g] = {"mean": float(np.mean(episodes)), "scores": episodes}
            runs.append(RunInfo(path=Path(f"/tmp/runs/norm-{norm}-s{seed}"),
                                config={"algo": "scaled_ql", "seed": seed,
                                        "resolved": {"algo": "scaled_ql", "feature_norm": norm}},
                                metrics=[{"step": s, "loss": float(np.exp(-s / 5) + seed), "loss/td": 1.0 / (s + 1)}
                                         for s in range(10)],
                                scores={"per_game": per_game}, kind="pretrain"))
            levels.append({"feature_norm": norm})
    return AblationData(name="norm", source="synthetic", runs=runs, levels=levels,
                        factors={"feature_norm": [True, False]}, protocol="synthetic protocol")


def _restored_figures(root: Any) -> list[dict[str, Any]]:
    """Every figure the widgets under ``root`` hold in their synced state (what a reload draws):
    plotly bundles in Output widgets' outputs, and ``go.FigureWidget``'s own figure state."""
    figs: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(w: Any) -> None:
        if w.model_id in seen:
            return
        seen.add(w.model_id)
        state = w.get_state()
        for out in state.get("outputs") or ():
            if PLOTLY_MIME in out.get("data", {}):
                figs.append(out["data"][PLOTLY_MIME])
        for data, layout in (("_widget_data", "_widget_layout"), ("_data", "_layout")):  # a go.FigureWidget
            if data in state and layout in state:  # (plotly >= 6, then older names)
                figs.append({"data": state[data], "layout": state[layout]})
        for child in getattr(w, "children", ()):
            walk(child)

    walk(root)
    return figs


def _title(fig: dict[str, Any]) -> str:
    title = fig.get("layout", {}).get("title") or {}
    return str(title.get("text", "") if isinstance(title, dict) else title)


def _restored(ex: AblationExplorer, prefix: str) -> dict[str, Any] | None:
    found = [f for f in _restored_figures(ex.widget) if _title(f).startswith(prefix)]
    assert len(found) <= 1, f"{len(found)} figures titled {prefix!r}"
    return found[0] if found else None


def _plain(x: Any) -> Any:
    """JSON round trip: numpy arrays (plotly's typed-array JSON included) as plain lists."""
    return json.loads(json.dumps(x, default=lambda o: o.tolist()))


def _ys(trace: dict[str, Any]) -> list[float]:
    y = trace["y"]
    if isinstance(y, dict) and "bdata" in y:  # plotly >= 6: a base64 typed array
        import base64

        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
    return [float(v) for v in y]


def test_every_view_is_in_the_widgets_synced_state():
    ex = AblationExplorer(_data(), reps=100)
    restored = [_title(f) for f in _restored_figures(ex.widget)]
    assert len(restored) == len(VIEWS)
    for name in VIEWS:
        assert _title(_plain(ex.figures[name].to_plotly_json())) in restored, name


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_a_reload_restores_the_current_choice_not_the_first():
    data = _data()
    ex = AblationExplorer(data, reps=100)
    scores = {f"feature_norm={n}": {g: [r.scores["per_game"][g]["mean"] for r, lv in zip(data.runs, data.levels)
                                        if lv["feature_norm"] == n] for g in GAMES} for n in (True, False)}
    agg = M.aggregate(scores, "human", reps=100, seed=0)
    iqm = _restored(ex, "IQM (")
    assert iqm is not None
    np.testing.assert_allclose(_ys(iqm["data"][0]), [agg[k]["iqm"] for k in scores])

    ex.controls["metric"].value = "optimality_gap"
    gap = _restored(ex, "optimality gap (")
    assert gap is not None, f"the restored state still shows {[_title(f) for f in _restored_figures(ex.widget)]}"
    np.testing.assert_allclose(_ys(gap["data"][0]), [agg[k]["optimality_gap"] for k in scores])
    assert _restored(ex, "IQM (") is None  # redrawn in its place, not beside the first plot

    ex.controls["curve"].value = "loss/td"
    curves = ex.figures["learning_curves"]
    restored = _restored(ex, _title(_plain(curves.to_plotly_json())))
    assert restored is not None and "loss/td" in json.dumps(restored["layout"])
    assert len(restored["data"]) == len(curves.data) == len(data.runs)

    ex.controls["games"].value = ("Pong",)
    pong = _restored(ex, "optimality gap (")
    assert pong is not None
    want = M.aggregate({k: {"Pong": v["Pong"]} for k, v in scores.items()}, "human", reps=100, seed=0)
    np.testing.assert_allclose(_ys(pong["data"][0]), [want[k]["optimality_gap"] for k in scores])


def test_an_error_message_is_what_a_reload_shows():
    ex = AblationExplorer(_data(), reps=100)
    ex.controls["normalization"].value = "dqn"  # Breakout has no DQN reference score
    assert "no dqn reference score for Breakout" in ex.message.value
    assert "no dqn reference score for Breakout" in json.dumps(_restored_figures(ex.widget))


def test_runs_that_share_no_game_get_a_reason_not_an_error():
    """Notebooks 02, 03 and 04 with their defaults evaluate Pong+Breakout, MsPacman and Breakout:
    notebook 06 over runs/* raised 'no scores given' in the papers' figures cell."""
    from workbench.viz.ablation import paper_figures

    data = _data()
    for i, run in enumerate(data.runs):  # each level evaluated on its own game
        game = GAMES[i // 2]
        assert run.scores is not None
        run.scores["per_game"] = {game: run.scores["per_game"][game]}
    figs, skipped = paper_figures(data, reps=100)
    assert figs == {} and skipped["all"].startswith("no game was evaluated by every group of runs")
    assert "norm-True-s0: Breakout" in skipped["all"] and "norm-False-s1: Pong" in skipped["all"]
    ex = AblationExplorer(data, reps=100)  # the explorer says it in its plots
    assert "cover different games" in ex.numbers.get("error", "")
    assert "cover different games" in json.dumps(_restored_figures(ex.widget))

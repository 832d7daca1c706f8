"""Figure builders: the drawn data must equal expectations computed independently of the code."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from workbench.viz import agent_figures as A
from workbench.viz import export as E
from workbench.viz import results_figures as R


def _decode(source: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source[len(prefix):]))).convert("RGB"))


def _node(i, parent, depth, action, reward, q, score, kept, terminal=False):
    return dict(id=i, parent=parent, depth=depth, action=action, reward=reward, q=q, score=score,
                kept=kept, terminal=terminal)


# A beam search with K=2, H=2, written out by hand. Node ids are deliberately not in layout order.
TREE = {
    "chosen_action": 3,
    "nodes": [
        _node(0, -1, 0, -1, 0.0, 0.5, 0.0, True),
        _node(1, 0, 1, 1, 0.0, 0.2, 0.2, False),   # depth-1 score ranks: 2 (0.9) > 5 (0.7) > 1 (0.2)
        _node(2, 0, 1, 3, 1.0, -0.1, 0.9, True),
        _node(5, 0, 1, 0, 0.0, 0.7, 0.7, True),
        _node(7, 5, 2, 2, 0.0, 0.1, 0.6, True),    # children of 5 come after children of 2
        _node(3, 2, 2, 0, 0.0, 0.3, 1.1, True),
        _node(4, 2, 2, 1, 0.0, -2.0, -1.0, False, True),
        _node(6, 5, 2, 4, 1.0, 0.0, 1.5, False),
    ],
}
# Expected (x = depth, y = rank): depth 1 by score; depth 2 grouped by parent rank, then score.
EXPECTED_XY = {0: (0, 0), 2: (1, 0), 5: (1, 1), 1: (1, 2), 3: (2, 0), 4: (2, 1), 6: (2, 2), 7: (2, 3)}


def test_search_tree_coordinates_edges_and_hover_data():
    fig = A.make_search_tree_figure(TREE, ["NOOP", "FIRE", "UP", "RIGHT", "LEFT"])
    edges, nodes = fig.data
    ids = [n["id"] for n in TREE["nodes"]]
    assert [(x, y) for x, y in zip(nodes.x, nodes.y)] == [EXPECTED_XY[i] for i in ids]
    # one segment per non-root node, each "parent, child, None"
    n_edges = sum(1 for n in TREE["nodes"] if n["parent"] != -1)
    assert n_edges == 7
    assert len(edges.x) == len(edges.y) == 3 * n_edges
    assert list(edges.x[2::3]) == [None] * n_edges
    segs = {((edges.x[3 * k], edges.y[3 * k]), (edges.x[3 * k + 1], edges.y[3 * k + 1]))
            for k in range(n_edges)}
    want = {(EXPECTED_XY[n["parent"]], EXPECTED_XY[n["id"]]) for n in TREE["nodes"] if n["parent"] != -1}
    assert segs == want
    for row, n in zip(nodes.customdata, TREE["nodes"]):
        assert list(row) == [n["id"], n["parent"], n["depth"], n["action"], n["reward"], n["q"],
                             n["score"], n["kept"], n["terminal"]]
    colors = list(nodes.marker.color)
    for c, n in zip(colors, TREE["nodes"]):
        want_c = A.ROOT_COLOR if n["parent"] == -1 else A.KEPT_COLOR if n["kept"] else A.PRUNED_COLOR
        assert c == want_c
    assert list(nodes.marker.symbol) == ["x" if n["terminal"] else "circle" for n in TREE["nodes"]]
    hover = nodes.hovertext[[n["id"] for n in TREE["nodes"]].index(2)]
    assert "RIGHT" in hover and "predicted reward: 1.000" in hover and "score: 0.900" in hover
    assert "RIGHT" in fig.layout.title.text  # chosen action 3


def test_search_tree_accepts_objects_and_rejects_dangling_parent():
    from types import SimpleNamespace

    obj = SimpleNamespace(chosen_action=3, nodes=[SimpleNamespace(**n) for n in TREE["nodes"]])
    a = A.make_search_tree_figure(obj)
    b = A.make_search_tree_figure(TREE)
    assert list(a.data[1].x) == list(b.data[1].x) and list(a.data[1].y) == list(b.data[1].y)
    bad = {"chosen_action": 0, "nodes": [_node(0, -1, 0, -1, 0, 0, 0, True), _node(1, 9, 1, 0, 0, 0, 0, True)]}
    with pytest.raises(ValueError, match="parent 9"):
        A.make_search_tree_figure(bad)


def test_return_distributions_and_expected_q():
    rng = np.random.default_rng(1)
    atoms, names = 11, ["NOOP", "FIRE", "UP", "DOWN"]
    probs = rng.dirichlet(np.ones(atoms), size=len(names))
    support = np.linspace(-5, 5, atoms)
    fig = A.make_return_distribution_figure(probs, support, names, chosen=2)
    lines, bars = fig.data[:4], fig.data[4]
    for a, tr in enumerate(lines):
        np.testing.assert_allclose(tr.y, probs[a])
        np.testing.assert_allclose(tr.x, support)
        assert abs(sum(tr.y) - 1.0) < 1e-9
    q = [sum(p * z for p, z in zip(probs[a], support)) for a in range(len(names))]
    np.testing.assert_allclose(bars.x, q)
    assert list(bars.y) == names
    assert lines[2].line.width > max(lines[a].line.width for a in (0, 1, 3))
    assert bars.marker.color[2] == A.CHOSEN_COLOR
    assert f"UP (Q={q[2]:.3f})" in fig.layout.title.text
    with pytest.raises(ValueError, match="action names"):
        A.make_return_distribution_figure(probs, support, names[:3])
    with pytest.raises(ValueError, match="atoms"):
        A.make_return_distribution_figure(probs[:, :5], support, names)


def test_aggregate_bars_error_bars_span_the_given_cis():
    agg = {
        "scaled_ql": {"median": 0.8, "median_ci": [0.6, 0.95], "iqm": 1.1, "iqm_ci": [0.9, 1.3],
                      "mean": 1.5, "mean_ci": [1.2, 1.9], "optimality_gap": 0.3, "optimality_gap_ci": [0.25, 0.36]},
        "bc": {"median": 0.2, "median_ci": [0.1, 0.3], "iqm": 0.25, "iqm_ci": [0.2, 0.33],
               "mean": 0.4, "mean_ci": [0.3, 0.5], "optimality_gap": 0.7, "optimality_gap_ci": [0.65, 0.75]},
    }
    fig = R.make_aggregate_figure(agg)
    assert len(fig.data) == 8  # one horizontal bar per (metric, method)
    for k, tr in enumerate(fig.data):
        metric, method = R.AGGREGATE_METRICS[k // 2], ["scaled_ql", "bc"][k % 2]
        assert tr.orientation == "h" and list(tr.y) == [method] and tr.xaxis == ("x" if k < 2 else f"x{k // 2 + 1}")
        lo, hi = agg[method][f"{metric}_ci"]
        assert tr.x[0] == agg[method][metric]
        assert tr.x[0] + tr.error_x.array[0] == pytest.approx(hi)
        assert tr.x[0] - tr.error_x.arrayminus[0] == pytest.approx(lo)
    # The methods name the rows (on the left, in the methods' order): no legend repeats them.
    assert list(dict.fromkeys(tr.y[0] for tr in fig.data)) == ["scaled_ql", "bc"]
    assert fig.layout.showlegend is False
    only_iqm = R.make_aggregate_figure(agg, metrics=("iqm", "nonexistent"))
    assert len(only_iqm.data) == 2
    with pytest.raises(ValueError, match="available keys"):
        R.make_aggregate_figure(agg, metrics=("nope",))


def test_performance_profile_band_and_curve():
    taus = np.linspace(0, 2, 5)
    curves = {"a": [1.0, 0.8, 0.5, 0.2, 0.0], "b": [1.0, 0.6, 0.3, 0.1, 0.0]}
    cis = {"a": [[0.9, 0.7, 0.4, 0.1, 0.0], [1.0, 0.9, 0.6, 0.3, 0.1]]}
    fig = R.make_performance_profile_figure(taus, curves, cis)
    band, line_a, line_b = fig.data
    assert band.fill == "toself"
    np.testing.assert_allclose(band.x, list(taus) + list(taus[::-1]))
    np.testing.assert_allclose(band.y, cis["a"][1] + cis["a"][0][::-1])
    np.testing.assert_allclose(line_a.y, curves["a"])
    np.testing.assert_allclose(line_b.y, curves["b"])
    with pytest.raises(ValueError, match="shape"):
        R.make_performance_profile_figure(taus, {"a": [1, 2]})


def test_probability_of_improvement_bars():
    pairs = {"scaled_ql,bc": {"p": 0.8, "ci": [0.7, 0.9]}, ("jowa", "bc"): (0.6, [0.5, 0.75])}
    fig = R.make_probability_of_improvement_figure(pairs)
    (bar,) = [d for d in fig.data if d.type == "bar"]
    assert list(bar.y) == ["P(scaled_ql > bc)", "P(jowa > bc)"]
    assert list(bar.x) == [0.8, 0.6]
    assert [x + p for x, p in zip(bar.x, bar.error_x.array)] == pytest.approx([0.9, 0.75])
    assert [x - m for x, m in zip(bar.x, bar.error_x.arrayminus)] == pytest.approx([0.7, 0.5])


def test_scaling_curve_sorted_by_params_with_reference():
    pts = [
        {"family": "resnet", "params": 80e6, "iqm": 1.2, "iqm_ci": [1.0, 1.4], "label": "resnet101"},
        {"family": "resnet", "params": 20e6, "iqm": 0.8, "iqm_ci": [0.7, 0.9], "label": "resnet34"},
        {"family": "impala", "params": 2e6, "iqm": 0.4},
    ]
    ref = [{"label": "paper ResNet-101", "params": 80e6, "iqm": 1.3}]
    fig = R.make_scaling_figure(pts, ref)
    resnet, impala, paper = fig.data
    assert list(resnet.x) == [20e6, 80e6] and list(resnet.y) == [0.8, 1.2]
    assert list(resnet.error_y.array) == pytest.approx([0.1, 0.2])
    assert list(resnet.error_y.arrayminus) == pytest.approx([0.1, 0.2])
    assert list(impala.error_y.array) == [0.0]
    assert list(paper.x) == [80e6] and list(paper.y) == [1.3]
    assert fig.layout.xaxis.type == "log"


def test_learning_curves_skip_missing_keys_and_sort_steps():
    runs = {
        "run1": [{"step": 10, "loss": 1.0}, {"step": 5, "loss": 2.0}, {"step": 7, "eval": 3.0},
                 {"step": 12, "loss": float("nan")}],
        "run2": [{"step": 1, "loss": 5.0, "eval": 0.5}],
    }
    fig = R.make_learning_curve_figure(runs, ["loss", "eval"])
    by = {(d.name, d.yaxis): d for d in fig.data}
    assert list(by[("run1", "y")].x) == [5.0, 10.0] and list(by[("run1", "y")].y) == [2.0, 1.0]
    assert list(by[("run1", "y2")].y) == [3.0]
    assert list(by[("run2", "y2")].y) == [0.5]
    assert len(fig.data) == 4
    with pytest.raises(ValueError, match="available keys"):
        R.make_learning_curve_figure(runs, "nope")


def test_ablation_table_cells():
    rows = [{"ablation": "no feature norm", "iqm": 0.51234, "iqm_ci": [0.4, 0.6]},
            {"ablation": "full", "iqm": 0.9}]
    fig = R.make_ablation_table_figure(rows)
    table = fig.data[0]
    assert [v for v in table.header.values] == ["<b>ablation</b>", "<b>iqm</b>", "<b>iqm_ci</b>"]
    assert list(table.cells.values[0]) == ["no feature norm", "full"]
    assert list(table.cells.values[1]) == ["0.512", "0.900"]
    assert list(table.cells.values[2]) == ["[0.400, 0.600]", ""]


def test_frame_pair_images_roundtrip():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, size=(2, 84, 84), dtype=np.uint8)
    pred = rng.integers(0, 255, size=(2, 84, 84), dtype=np.uint8)
    fig = A.make_frame_pair_figure(real, pred)
    assert len(fig.data) == 4
    for tr, want in zip(fig.data, [real[0], real[1], pred[0], pred[1]]):
        img = _decode(tr.source)
        assert img.shape == (84, 84, 3)
        np.testing.assert_array_equal(img[:, :, 0], want)
    rgb = rng.integers(0, 255, size=(210, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode(A.make_frame_figure(rgb).data[0].source), rgb)
    # Square pixels in every subplot: each image's y axis is anchored to its own x axis.
    for tr in fig.data:
        yname = "yaxis" + tr.yaxis[1:]
        assert fig.layout[yname].scaleanchor == tr.xaxis
    assert A.make_frame_figure(rgb).layout.yaxis.scaleanchor == "x"


def test_save_figure_reports_missing_browser(tmp_path, monkeypatch):
    fig = R.make_probability_of_improvement_figure({"a,b": (0.6, [0.5, 0.7])})
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    status = E.save_figure(fig, tmp_path / "sub" / "poi")
    assert status.html.is_file() and status.html.suffix == ".html"
    assert status.png is None and "Chromium" in status.message
    assert not (tmp_path / "sub" / "poi.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(E.find_chromium() is None, reason="no Chrome/Chromium for kaleido (apt-get install chromium)")
def test_save_figures_writes_png(tmp_path):
    tall = R.make_learning_curve_figure({"r": [{"step": 1, "a": 1.0, "b": 2.0, "c": 3.0}]}, ["a", "b", "c"])
    figs = {tmp_path / "a": R.make_probability_of_improvement_figure({"a,b": (0.6, [0.5, 0.7])}),
            tmp_path / "b": R.make_ablation_table_figure([{"x": 1.0}]), tmp_path / "c": tall}
    statuses = E.save_figures(figs)
    for s in statuses:
        assert s.png is not None and s.png.is_file(), s.message
        with Image.open(s.png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with Image.open(statuses[2].png) as im:  # the figure's own layout size, not kaleido's 700 x 500
        assert im.size == (tall.layout.width, tall.layout.height)


# --------------------------------------------------------------------------- analysis pipeline


def _fake_run(root, name, *, model, seed, means, hidden, dataset=""):
    """A run folder as workbench.pipeline leaves it (config, metrics, checkpoint, eval scores)."""
    import json

    import torch

    from workbench.checkpoint import save_checkpoint
    from workbench.run import Run

    d = root / name
    Run(d).create("pretrain", {"model": model, "algo": "scaled_ql", "seed": seed, "games": "Assault,Breakout",
                               "output_dir": str(d), "dataset": dataset},
                  {"algo": "scaled_ql", "model": model, "games": ["Assault", "Breakout"]})
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "loss/td": 0.5 / (s + 1)}) for s in range(0, 50, 10)]
    (d / "metrics.jsonl").write_text("\n".join(lines + ['{"step": 60, "loss"']) + "\n")  # cut last line
    save_checkpoint(d, 50, torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 2)))
    per_game = {g: {"scores": [m - 1.0, m + 1.0], "mean": m} for g, m in means.items()}
    (d / "eval").mkdir()
    (d / "eval" / "scores.json").write_text(json.dumps({"per_game": per_game}))
    return d


@pytest.mark.slow  # seconds: the fast loop keeps under a minute
def test_build_figures_from_run_folders(tmp_path):
    import json

    from scipy.stats import trim_mean

    from workbench.metrics import reference_scores
    from workbench.viz.analysis import build_figures, read_run

    runs = [
        _fake_run(tmp_path, "small_s0", model="resnet-tiny", seed=0, means={"Assault": 300.0, "Breakout": 10.0},
                  hidden=3),
        _fake_run(tmp_path, "small_s1", model="resnet-tiny", seed=1, means={"Assault": 340.0, "Breakout": 14.0},
                  hidden=3),
        _fake_run(tmp_path, "big_s0", model="resnet18", seed=0, means={"Assault": 500.0, "Breakout": 30.0}, hidden=8),
        _fake_run(tmp_path, "big_s1", model="resnet18", seed=1, means={"Assault": 600.0, "Breakout": 40.0}, hidden=8),
    ]
    info = read_run(runs[0])
    assert len(info.metrics) == 5 and any("unreadable" in p for p in info.problems)
    assert info.params == 4 * 3 + 3 + 3 * 2 + 2

    out = tmp_path / "figures"
    rep = build_figures(runs, out, include_paper_reference=True, png=False, reps=200)
    for name in ("learning_curves", "aggregates", "performance_profiles", "probability_of_improvement",
                 "scaling", "ablation_table"):
        assert (out / f"{name}.html").is_file(), rep.skipped
    readme = (out / "README.md").read_text()
    assert "runs = seeds" in readme and "scaling" in readme and "small_s0" in readme

    # IQM of each method computed here from the raw scores: 2 seeds x 2 games, trimmed 25%.
    ref = reference_scores()

    def hns(g, s):
        return (s - ref[g]["random"]) / (ref[g]["human"] - ref[g]["random"])

    want = {
        "Scaled QL/resnet-tiny": trim_mean(
            [hns("Assault", 300), hns("Assault", 340), hns("Breakout", 10), hns("Breakout", 14)], 0.25
        ),
        "Scaled QL/resnet18": trim_mean(
            [hns("Assault", 500), hns("Assault", 600), hns("Breakout", 30), hns("Breakout", 40)], 0.25
        ),
    }
    # subplots in order median, iqm, mean, gap: the IQM bars sit on x axis 2
    got = {tr.y[0]: tr.x[0] for tr in rep.figures["aggregates"].data if tr.xaxis == "x2"}
    for method, value in want.items():
        assert got[method] == pytest.approx(value)
    # Table C.1 covers Assault and Breakout; JOWA's Table 2 lacks Breakout, so no JOWA bar.
    assert any(m.startswith("paper: Scaled QL (80M)") for m in got)
    assert not any("JOWA" in m for m in got)
    scaling = rep.figures["scaling"].data
    assert sorted(scaling[0].x) == [4 * 3 + 3 + 3 * 2 + 2, 4 * 8 + 8 + 8 * 2 + 2]
    assert scaling[-1].name == "paper (reported)" and 80e6 in list(scaling[-1].x)
    summary = json.loads(json.dumps(rep.summary()))  # JSON-able
    assert summary["bootstrap_runs_are"] == "seeds"


def test_build_figures_reports_what_is_missing(tmp_path):
    from workbench.viz.analysis import build_figures

    empty = tmp_path / "empty_run"
    empty.mkdir()
    rep = build_figures([empty], tmp_path / "figs", png=False, reps=200)
    assert rep.figures == {}
    assert "no run has evaluation scores" in rep.skipped["aggregates"]
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert "config.json is missing" in readme and "Not drawn" in readme


def test_readme_notes_open_the_generated_readme_and_a_missing_file_stops_first(tmp_path):
    from workbench.viz.analysis import build_figures

    empty = tmp_path / "empty_run"
    empty.mkdir()
    notes = tmp_path / "findings.md"
    notes.write_text("# The study\n\nFreeway learned.\n")
    build_figures([empty], tmp_path / "figs", png=False, reps=200, readme_notes=notes)
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert readme.startswith("# The study\n\nFreeway learned.\n")
    assert readme.index("Freeway learned.") < readme.index("# How these figures were made") < readme.index("## Runs")
    assert f"`{empty}`" in readme  # outside the project: its absolute path
    # A wrong path fails before any run is read or any figure written.
    with pytest.raises(FileNotFoundError, match="readme_notes"):
        build_figures([tmp_path / "not_a_run"], tmp_path / "figs2", png=False, reps=200,
                      readme_notes=tmp_path / "nope.md")
    assert not (tmp_path / "figs2").exists()


def test_readme_names_runs_inside_the_project_relative_to_its_root(tmp_path, monkeypatch):
    from workbench.paths import ROOT_ENV
    from workbench.run import Run
    from workbench.viz.analysis import build_figures

    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    run = tmp_path / "runs" / "a_run"
    Run(run).create("pretrain", {"model": "resnet-tiny"}, {"model": "resnet-tiny", "algo": "scaled_ql"})
    build_figures([run], tmp_path / "figs", png=False, reps=200)
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert "- `runs/a_run` → method" in readme


def test_scores_figure_normalizes_with_reference_scores():
    from workbench.metrics import reference_scores

    scores = {"per_game": {"Breakout": {"scores": [10.0, 20.0], "mean": 15.0},
                           "Pong": {"scores": [-21.0, -19.0], "mean": -20.0}},
              "aggregates": {"iqm": 0.123}}
    fig = R.make_scores_figure(scores)
    bars, eps = fig.data
    ref = reference_scores()

    def hns(g, s):
        return (s - ref[g]["random"]) / (ref[g]["human"] - ref[g]["random"])

    assert list(bars.x) == ["Breakout", "Pong"]
    assert list(bars.y) == pytest.approx([hns("Breakout", 15.0), hns("Pong", -20.0)])
    assert list(eps.y) == pytest.approx([hns("Breakout", 10), hns("Breakout", 20), hns("Pong", -21), hns("Pong", -19)])
    assert "IQM 0.123" in fig.layout.title.text


def test_scores_figure_draws_games_without_reference_scores_raw():
    # AirRaid has no reference scores; Breakout's human score is 30.5 (normalized: 1.0).
    scores = {"per_game": {"AirRaid": {"scores": [400.0, 600.0], "mean": 500.0},
                           "Breakout": {"scores": [30.5], "mean": 30.5}}}
    bars, eps = R.make_scores_figure(scores).data
    assert list(bars.x) == ["AirRaid (raw)", "Breakout"]
    assert list(bars.y) == pytest.approx([500.0, 1.0])
    assert list(eps.x) == ["AirRaid (raw)", "AirRaid (raw)", "Breakout"]
    assert list(eps.y) == pytest.approx([400.0, 600.0, 1.0])


def test_count_parameters_skips_target_copies(tmp_path):
    import torch
    from safetensors.torch import save_file

    from workbench.viz.analysis import count_parameters

    save_file({"world.q_head.w": torch.zeros(3, 4), "world.target_q_head.module.w": torch.zeros(3, 4),
               "tokenizer.codebook.weight": torch.zeros(5, 2), "encoder.w": torch.zeros(7),
               "target.encoder.w": torch.zeros(7)}, str(tmp_path / "model.safetensors"))
    assert count_parameters(tmp_path) == 12 + 10 + 7


def test_learning_curves_draw_scaled_ql_and_jowa_runs_together(tmp_path):
    import json

    from workbench.run import Run
    from workbench.viz.analysis import build_figures

    recs = {
        "sql": [{"step": s, "loss": 4.0 - s / 10, "loss/td": 3.0, "loss/cql": 1.0 - s / 10, "q/data_mean": 0.1 * s}
                for s in (5, 10)],
        "jowa": [{"step": s, "loss": 6.0 - s / 10, "loss/world": 5.0, "loss/action": 1.0 + s, "q/data_mean": 9.0,
                  "loss/td": 1.0} for s in (5, 10, 15)],
    }
    dirs = []
    for name, model in (("sql", "resnet-tiny"), ("jowa", "jowa-tiny")):
        d = tmp_path / name
        Run(d).create("pretrain", {"model": model}, {"model": model, "algo": "jowa" if name == "jowa" else "scaled_ql"})
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs[name]) + "\n")
        dirs.append(d)
    rep = build_figures(dirs, tmp_path / "figs", png=False, reps=200)
    fig = rep.figures["learning_curves"]
    rows = [a.text for a in fig.layout.annotations]
    # Each algorithm's own curves (its registry entry), in order, shared names once; the total first.
    assert rows == ["loss", "loss/td", "loss/cql", "q/data_mean", "loss/world", "loss/action"]
    # Each trace sits on its metric's row (y axis n = row n) and carries that run's values.
    for tr in fig.data:
        metric = rows[int(tr.yaxis[1:] or 1) - 1]
        run = "jowa" if tr.name.startswith("JOWA") else "sql"
        assert list(tr.y) == [r[metric] for r in recs[run]], (run, metric)
    drawn = {(tr.name.split("/")[0], rows[int(tr.yaxis[1:] or 1) - 1]) for tr in fig.data}
    assert ("JOWA", "loss") in drawn and ("JOWA", "loss/world") in drawn and ("Scaled QL", "loss/td") in drawn
    assert ("JOWA", "loss/td") in drawn  # one namespace: both methods' TD terms share a row
    assert not any(m == "loss/world" for r, m in drawn if r == "Scaled QL")


def _scores_doc(means: dict[str, float], cap: int | None) -> dict:
    doc = {"per_game": {g: {"scores": [m - 1.0, m + 1.0], "mean": m, "truncated": [False, False]}
                        for g, m in means.items()}}
    if cap is not None:
        doc.update(max_agent_steps=cap, epsilon=0.001, mode=None, difficulty=None,
                   comparable_to_papers=cap == 27_000)
    return doc


@pytest.mark.slow
def test_analysis_never_mixes_protocols_and_names_what_it_left_out(tmp_path):
    """Three runs: two evaluated at the 27,000-step protocol (one of them by notebook 05, in
    eval/scores_*.json beside a capped pretraining evaluation), one only at a 250-step cap. The
    comparison uses the protocol two runs share, with each run's matching file; the third run is
    left out and named; mix_protocols=True puts it back."""
    import json

    from workbench.viz.analysis import build_figures

    a = _fake_run(tmp_path, "a", model="resnet-tiny", seed=0, means={"Assault": 300.0, "Breakout": 10.0}, hidden=3)
    b = _fake_run(tmp_path, "b", model="resnet18", seed=0, means={"Assault": 500.0, "Breakout": 30.0}, hidden=8)
    c = _fake_run(tmp_path, "c", model="resnet50", seed=0, means={"Assault": 900.0, "Breakout": 90.0}, hidden=9)
    (a / "eval" / "scores.json").write_text(json.dumps(_scores_doc({"Assault": 300.0, "Breakout": 10.0}, 27_000)))
    # b: pretraining evaluated at a 250-step cap, notebook 05 at the full protocol (other scores)
    (b / "eval" / "scores.json").write_text(json.dumps(_scores_doc({"Assault": 5.0, "Breakout": 1.0}, 250)))
    (b / "eval" / "scores_Assault-Breakout.json").write_text(
        json.dumps(_scores_doc({"Assault": 500.0, "Breakout": 30.0}, 27_000)))
    (c / "eval" / "scores.json").write_text(json.dumps(_scores_doc({"Assault": 900.0, "Breakout": 90.0}, 250)))

    rep = build_figures([a, b, c], tmp_path / "figs", png=False, reps=100)
    assert rep.protocol.startswith("episodes capped at 27,000 agent steps") and rep.comparable_to_papers is True
    assert list(rep.left_out) == ["c"] and "250 agent steps" in rep.left_out["c"]
    iqm = {tr.y[0]: tr.x[0] for tr in rep.figures["aggregates"].data if tr.xaxis == "x2"}
    ours = {k: v for k, v in iqm.items() if not k.startswith("paper:")}
    assert len(ours) == 2 and not any("resnet50" in k for k in ours)
    assert rep.runs[1].scores_file.name == "scores_Assault-Breakout.json"  # notebook 05's file, not the capped one
    readme = (tmp_path / "figs" / "README.md").read_text()
    assert "Left out of the comparison" in readme and "`c`" in readme

    mixed = build_figures([a, b, c], tmp_path / "mixed", png=False, reps=100, mix_protocols=True)
    assert mixed.left_out == {} and mixed.protocol.startswith("mixed on request")
    names = {tr.y[0] for tr in mixed.figures["aggregates"].data if tr.xaxis == "x2"}
    assert any("resnet50" in n for n in names)


def test_analysis_of_capped_evaluations_says_so_and_draws_no_paper_numbers(tmp_path):
    import json

    from workbench.viz.analysis import build_figures

    a = _fake_run(tmp_path, "a", model="resnet-tiny", seed=0, means={"Assault": 300.0, "Breakout": 10.0}, hidden=3)
    (a / "eval" / "scores.json").write_text(json.dumps(_scores_doc({"Assault": 300.0, "Breakout": 10.0}, 1000)))
    rep = build_figures([a], tmp_path / "figs", png=False, reps=100)
    assert rep.comparable_to_papers is False
    title = rep.figures["aggregates"].layout.title.text
    assert "capped at 1,000 agent steps" in title and "not comparable to the papers" in title
    assert not any(tr.y[0].startswith("paper:") for tr in rep.figures["aggregates"].data)
    assert "paper reference" in rep.skipped


def test_search_tree_nodes_carry_visible_action_and_score_labels():
    nodes = [dict(id=0, parent=-1, depth=0, action=-1, reward=0.0, q=0.0, score=0.0, kept=True, terminal=False),
             dict(id=1, parent=0, depth=1, action=2, reward=1.0, q=0.5, score=1.25, kept=True, terminal=False),
             dict(id=2, parent=0, depth=1, action=0, reward=0.0, q=-0.2, score=-0.5, kept=False, terminal=False)]
    fig = A.make_search_tree_figure({"nodes": nodes, "chosen_action": 2}, ["NOOP", "FIRE", "UP"])
    node_trace = fig.data[1]
    assert "text" in node_trace.mode
    assert list(node_trace.text) == ["root", "UP 1.25", "NOOP -0.50"]
    assert fig.layout.xaxis.range[1] > 1  # room right of the deepest nodes for their labels


def test_ablation_table_is_as_wide_as_its_columns_and_scaling_ticks_decades():
    long = "Scaled QL/resnet-tiny (games=Pong,Breakout,Assault,Asterix, lr=0.0001)"
    rows = [{"method": long, "runs": 2, "IQM": 0.5, "IQM 95% CI": [0.1, 0.9], "median": 0.4, "mean": 0.6,
             "optimality gap": 0.5, "params": "1,234,567"}]
    fig = R.make_ablation_table_figure(rows)
    chars = list(fig.data[0].columnwidth)
    assert chars[0] == len(long) + 1
    # every character of every column gets its pixels: nothing is clipped in a PNG of layout.width
    assert fig.layout.width >= R.TABLE_CHAR_PX * sum(chars)
    scaling = R.make_scaling_figure([{"family": "a", "params": 2e5, "iqm": 0.1}, {"family": "a", "params": 8e7,
                                                                                   "iqm": 0.5}])
    assert list(scaling.layout.xaxis.ticktext) == ["100k", "1M", "10M", "100M"]
    assert scaling.layout.xaxis.type == "log"


@pytest.mark.slow
def test_scaled_ql_figure_2_draws_the_behaviour_policy_of_a_recorded_history(tmp_path):
    import json

    from workbench import metrics as M
    from workbench.viz.ablation import load_ablation, paper_figures

    data_root = tmp_path / "history"
    data_root.mkdir()
    (data_root / "behaviour.json").write_text(json.dumps({"behaviour": {
        "sub_optimal": {"Assault": 700.0, "Breakout": 5.0}, "near_optimal": {"Assault": 600.0, "Breakout": None}}}))
    runs = [_fake_run(tmp_path, f"r{seed}_{model}", model=model, seed=seed, hidden=4 if model == "a" else 8,
                      means={"Assault": 300.0 + seed, "Breakout": 10.0 + seed}, dataset=str(data_root))
            for model in ("a", "b") for seed in (0, 1)]
    data = load_ablation([str(r) for r in runs])
    assert data.behaviour == {"sub_optimal": {"Assault": 700.0, "Breakout": 5.0}, "near_optimal": {"Assault": 600.0}}
    figs, _ = paper_figures(data, reps=200, png=False)
    lines = {t.name: (list(t.x), list(t.y)) for t in figs["scaled_ql_fig2_profiles"].data if t.mode == "lines"}
    # One value per game, human-normalized like the runs: the share of the 2 games above each tau.
    taus, drawn = lines["behaviour policy (sub_optimal)"]
    normalized = [M.normalize_score("Assault", 700.0), M.normalize_score("Breakout", 5.0)]
    assert drawn == pytest.approx([np.mean([n > t for n in normalized]) for t in taus])
    assert {0.0, 0.5, 1.0} <= set(drawn)  # the taus span both games' scores
    # A split missing a game draws no line.
    assert "behaviour policy (near_optimal)" not in lines
    # Runs without a recorded history (or on different data) have no behaviour line.
    plain = [_fake_run(tmp_path / "plain", f"p{seed}", model="a", seed=seed, hidden=4,
                       means={"Assault": 300.0, "Breakout": 10.0}) for seed in (0, 1)]
    assert load_ablation([str(r) for r in plain]).behaviour == {}


def test_runs_share_one_plotly_bundle_on_disk(tmp_path):
    """Every run's figures open alone (plotly.min.js beside them) while the runs folder holds the
    4.8 MB bundle once: the files are hard links to one inode. A run outside a runs folder gets
    its own file and nothing is written beside it."""
    import plotly.graph_objects as go

    from workbench.run import Run
    from workbench.viz.export import save_figure

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    for name in ("a", "b"):
        Run(tmp_path / "runs" / name).create("pretrain", {}, {"algo": "scaled_ql"})
        save_figure(fig, tmp_path / "runs" / name / "figures" / "curve", png=False)
    a, b = (tmp_path / "runs" / n / "figures" / "plotly.min.js" for n in ("a", "b"))
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 3  # the runs folder's copy + 2 links
    assert a.stat().st_size > 1_000_000 and b"plotly.min.js" in (a.parent / "curve.html").read_bytes()
    Run(tmp_path / "solo" / "run").create("pretrain", {}, {"algo": "scaled_ql"})
    save_figure(fig, tmp_path / "solo" / "run" / "figures" / "curve", png=False)
    assert sorted(p.name for p in (tmp_path / "solo").iterdir()) == ["run"]
    solo = tmp_path / "solo" / "run" / "figures"
    assert (solo / "plotly.min.js").stat().st_nlink == 1 and not (solo / ".plotly").exists()

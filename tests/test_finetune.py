"""Offline fine-tuning (workbench.finetune): both papers' protocols on the CPU scale.

The pretrained checkpoints are built here (a Scaled QL and a JOWA model trained on Breakout,
weights from a fixed seed) and written as run folders; fine-tuning data is the Dopamine-written
Pong fixture. Expectations are stated against the source checkpoint's tensors, independent
fresh builds, brute-force computations and the planner's independent sequential reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from shared_paths import DQN_FIXTURES

from workbench import checkpoint as ckpt_io
from workbench import losses as L
from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.algos.jowa_finetune import JOWAFinetune, synthesize_segments
from workbench.algos.scaled_ql import ScaledQL, ScaledQLConfig
from workbench.config import EvaluateConfig
from workbench.finetune import FinetuneConfig, finetune
from workbench.pipeline import evaluate_run
from workbench.planner import beam_search_sequential
from workbench.run import Run

SOURCE_GAMES = ["Breakout"]
FT = dict(game="Pong", dataset=str(DQN_FIXTURES), steps=4, batch_size=8, eval_episodes=1, eval_max_steps=20,
          num_envs=1, device="cpu")


def _source_run(path, algo, algo_name: str, model: str, settings) -> str:
    run = Run(path)
    run.create("pretrain", {}, {"algo": algo_name, "model": model, "games": SOURCE_GAMES,
                                "settings": dataclasses.asdict(settings),
                                "stages": [{"name": "train", "subdir": ""}]})
    ckpt_io.save_checkpoint(run.path, 100, algo.model, target=algo.target_model)
    return str(run.path)


@pytest.fixture(scope="module")
def q_source(tmp_path_factory):
    settings = ScaledQLConfig(target_update_period=50)
    algo = ScaledQL.build("resnet-tiny", SOURCE_GAMES, settings, seed=11)
    return _source_run(tmp_path_factory.mktemp("q") / "pretrain", algo, "scaled_ql", "resnet-tiny", settings)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    ckpt = ckpt_io.resolve_checkpoint(run_dir)
    return {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items() if not k.startswith("target.")}


@pytest.fixture(scope="module")
def q_runs(q_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    out = {}
    for encoder in ("frozen", "finetuned"):
        config = FinetuneConfig.from_params(checkpoint=q_source, encoder=encoder, output_dir=str(root / encoder), **FT)
        out[encoder] = (config, finetune(config, progress=False))
    return out


def _head(weights, num_actions, game_index, atoms=51):
    start = sum(num_actions[:game_index]) * atoms
    rows = slice(start, start + num_actions[game_index] * atoms)
    return weights["heads.weight"][rows], weights["heads.bias"][rows]


@pytest.mark.slow
def test_frozen_encoder_is_bit_identical_trunk_reinitialized_old_head_untouched(q_source, q_runs):
    config, result = q_runs["frozen"]
    src, tuned = _weights(q_source), _weights(result.run_dir)
    enc = [k for k in tuned if k.startswith("encoder.")]
    assert enc and all(torch.equal(tuned[k], src[k]) for k in enc)
    # The trunk starts from a fresh initialization (seed 0), not the source's: after 4 Adam steps at
    # lr 5e-5 it lies within a few lr of the fresh weights and far from the source's.
    fresh = ScaledQL.build("resnet-tiny", config.games, config.settings, seed=config.seed).model.state_dict()
    trunk = [k for k in tuned if k.startswith("trunk.") and tuned[k].is_floating_point()]
    for k in trunk:
        assert (tuned[k] - fresh[k]).abs().max() <= 40 * 5e-5, k
    assert max(float((tuned[k] - src[k]).abs().max()) for k in trunk) > 0.05
    # The model's games: Pong (new, first: its data's game id 0), then the source's Breakout.
    assert config.games == ("Pong", "Breakout")
    na = [6, 4]  # minimal action sets
    new_w, _ = _head(tuned, na, 0)
    fresh_w, _ = _head(fresh, na, 0)
    assert new_w.shape == (6 * 51, 64) and (new_w - fresh_w).abs().max() <= 40 * 5e-5
    assert not torch.equal(new_w, fresh_w)  # and it was trained
    old, old_src = _head(tuned, na, 1), _head(src, [4], 0)
    assert torch.equal(old[0], old_src[0]) and torch.equal(old[1], old_src[1])


@pytest.mark.slow
def test_finetuned_encoder_changes(q_source, q_runs):
    _, result = q_runs["finetuned"]
    src, tuned = _weights(q_source), _weights(result.run_dir)
    enc = [k for k in tuned if k.startswith("encoder.") and tuned[k].is_floating_point()]
    assert sum(not torch.equal(tuned[k], src[k]) for k in enc) > len(enc) // 2


@pytest.mark.slow
def test_run_folder_records_source_and_transfer(q_source, q_runs):
    config, result = q_runs["frozen"]
    doc = json.loads((result.run_dir / "config.json").read_text())
    assert doc["kind"] == "finetune"
    res = doc["resolved"]
    assert res["source"]["checkpoint"] == str(ckpt_io.resolve_checkpoint(q_source))
    assert res["source"]["games"] == SOURCE_GAMES and res["source"]["step"] == 100
    assert res["eval_games"] == ["Pong"] and res["games"] == ["Pong", "Breakout"]
    assert res["split"] == "finetune_1pct"
    report = res["transfer"]
    assert report["parts"] == {"encoder": "transferred", "trunk": "reinitialized", "heads": "transferred"}
    assert {"heads.weight[Pong]", "heads.bias[Pong]"} == set(report["new"])
    assert "heads.weight[Breakout]" in report["transferred"]
    assert report["frozen"] and all(n.startswith("encoder.") for n in report["frozen"])
    # 1% of the fixture's valid Pong starts (3 checkpoints of 1,500 rows).
    manifest = json.loads((result.run_dir / "data" / "store" / "manifest.json").read_text())
    assert manifest["split"]["sample_fraction"] == 0.01 and manifest["split"]["select"] == "all"
    scores = json.loads((result.run_dir / "eval" / "scores.json").read_text())
    assert list(scores["per_game"]) == ["Pong"]
    assert scores["finetune"] == {"method": "transfer", "encoder": "frozen", "report": "final",
                                  "selection_on_eval_env": False, "game": "Pong"}


@pytest.mark.slow
def test_finetuned_checkpoint_evaluates_through_notebook_05(q_runs):
    _, result = q_runs["finetuned"]
    out = evaluate_run(EvaluateConfig(checkpoint=str(result.run_dir), episodes=1, num_envs=1, max_steps=15,
                                      output=str(result.run_dir / "eval" / "nb05.json"), device="cpu"),
                       progress=False)
    assert list(out["per_game"]) == ["Pong"] and len(out["per_game"]["Pong"]["scores"]) == 1


@pytest.mark.slow
def test_best_snapshot_is_flagged_and_loadable(q_source, tmp_path):
    config = FinetuneConfig.from_params(checkpoint=q_source, report="best_snapshot", snapshot_every=2,
                                        output_dir=str(tmp_path / "best"), **FT)
    result = finetune(config, progress=False)
    flag = result.scores["finetune"]
    assert flag["selection_on_eval_env"] is True and flag["report"] == "best_snapshot"
    assert [s["step"] for s in flag["snapshots"]] == [2, 4]
    best = max(flag["snapshots"], key=lambda s: (s["mean"], -s["step"]))
    assert flag["snapshot_step"] == best["step"]
    assert "selected on the evaluation environment" in result.scores["note"]
    final = json.loads((result.run_dir / "eval" / "scores_final.json").read_text())
    assert final["finetune"]["selection_on_eval_env"] is False
    chosen = ckpt_io.resolve_checkpoint(result.run_dir / "best_snapshot")
    assert ckpt_io.read_state(chosen)["step"] == flag["snapshot_step"]
    out = evaluate_run(EvaluateConfig(checkpoint=str(chosen), episodes=1, num_envs=1, max_steps=10, device="cpu",
                                      output=str(tmp_path / "b.json")), progress=False)
    assert list(out["per_game"]) == ["Pong"]


def test_baselines_resolve_to_one_fresh_game(q_source):
    scratch = FinetuneConfig.from_params(checkpoint=q_source, method="scratch", **FT)
    bc = FinetuneConfig.from_params(checkpoint=q_source, method="bc", **FT)
    assert scratch.games == bc.games == ("Pong",)
    assert scratch.algo_name == "scaled_ql" and bc.algo_name == "bc"
    assert scratch.run_dir.endswith("finetune-pretrain-Pong-scratch-seed0")
    paper = FinetuneConfig.from_params(checkpoint=q_source, game="Pong", preset="paper")
    stage = paper.stages()[0]
    assert (stage.steps, paper.effective_batch_size, stage.lr, paper.settings.alpha) == (300_000, 32, 5e-5, 0.05)
    assert stage.target_update_period == 2000  # the paper's, though the source ran with 50
    assert paper.effective_split == "finetune_1pct" and paper.effective_eval_episodes == 16


@pytest.mark.parametrize("params, message", [
    ({"game": "Breakout"}, "one of the checkpoint's training games"),
    ({"method": "finetune"}, "transfer | scratch | bc"),
    ({"encoder": "half"}, "frozen | finetuned"),
    ({"report": "best"}, "final | best_snapshot"),
    ({"game": "Pongg"}, "Pong"),
    ({"split": "half"}, "valid"),
    ({"algo_args": {"alpah": 0.1}}, "did you mean 'alpha'"),
])
def test_bad_parameters_are_refused(q_source, params, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.from_params(**{"checkpoint": q_source, **params})


def test_paper_preset_on_cpu_stops_with_estimate(q_source, tmp_path):
    config = FinetuneConfig.from_params(checkpoint=q_source, preset="paper", device="cpu",
                                        output_dir=str(tmp_path / "p"))
    with pytest.raises(RuntimeError, match="9,600,000 samples"):
        finetune(config, progress=False)
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------- JOWA


def test_combo_terms_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q_model, q_data = torch.randn(5, 18, generator=g) * 3, torch.randn(4, 18, generator=g) * 3
    valid_model = torch.rand(5, 18, generator=g) > 0.4
    valid_model[:, 0] = True
    actions = torch.tensor([0, 3, 17, 5])
    down, up = L.combo_terms(q_model, valid_model, q_data, actions)
    for i in range(5):  # model-generated states: soft maximum over the valid actions only
        want = math.log(sum(math.exp(float(q_model[i, a])) for a in range(18) if valid_model[i, a]))
        assert abs(float(down[i]) - want) < 1e-5
    for j in range(4):  # dataset state-actions: their own Q
        assert float(up[j]) == pytest.approx(float(q_data[j, actions[j]]), abs=1e-6)


@pytest.fixture(scope="module")
def pong_store(tmp_path_factory):
    from workbench.data.build import build_store

    return build_store(DQN_FIXTURES, tmp_path_factory.mktemp("pong") / "store", ["Pong"], [1], "n:400:episodes",
                       progress=False)


def _pong_batch(store, batch=3, seq_len=6, seed=0):
    from workbench.data.sampler import SequenceSampler

    return next(iter(SequenceSampler(store, ("Pong",), batch, seq_len=seq_len, seed=seed)))


def test_synthetic_segments_come_from_the_planner(pong_store):
    jowa = JOWA.build("jowa-tiny", ["Pong"], JOWAConfig(), seed=5)
    base = _pong_batch(pong_store, batch=3)
    syn = synthesize_segments(jowa, base, synthetic_steps=2, horizon=2, beam_width=2)
    model = jowa.model.eval()
    world = model.world
    tokens = model.tokenizer.encode(base["obs"]).long()
    B, L = tokens.shape[:2]
    c = L - 2
    # The real part is the real data, tokenized; actions as ALE ids.
    assert torch.equal(syn["tokens"][:, :c], tokens[:, :c])
    real_actions = jowa.actions.full(base["action"], base["game_id"])
    assert torch.equal(syn["action"][:, : c - 1], real_actions[:, : c - 1])
    # The first planned action is the independent sequential planner's.
    valid = jowa.actions.valid_mask(base["game_id"])
    mask = base["mask"].bool()
    ref = beam_search_sequential(world, tokens[:, c - 1], base["game_id"], valid, 2, 2, ctx_tokens=tokens[:, : c - 1],
                                 ctx_actions=real_actions[:, : c - 1], ctx_valid=mask[:, : c - 1])
    live = syn["td"][:, c - 1]
    assert live.any()
    assert torch.equal(syn["action"][live, c - 1], ref[live])
    # Teacher-forced brute force over the synthesized sequence: each imagined token is the world
    # model's argmax given everything before it, and each planned step's reward is the expected
    # reward sign the model predicts at its action token.
    with torch.no_grad():
        out = world(syn["tokens"], syn["action"], base["game_id"])
    pred = out["obs_logits"].argmax(-1).view(B, -1)
    rewards = (torch.softmax(out["reward_logits"].float(), -1) * torch.tensor([-1.0, 0.0, 1.0])).sum(-1)
    for b in range(B):
        for d in range(2):
            t = c - 1 + d
            if not syn["td"][b, t]:
                continue
            assert float(syn["reward"][b, t]) == pytest.approx(float(rewards[b, t]), abs=1e-4)
            if syn["imagined"][b, t + 1]:
                first = (t + 1) * 37  # position of the imagined frame's first token in the sequence
                assert torch.equal(pred[b, first - 1 : first + 35], syn["tokens"][b, t + 1])
    assert syn["imagined"][:, :c].sum() == 0 and syn["td"][:, : c - 1].sum() == 0


def test_jowa_stage2_loss_combo_parts_match_brute_force(pong_store):
    jowa = JOWA.build("jowa-tiny", ["Pong"], JOWAConfig(), seed=6)
    algo = JOWAFinetune(jowa, jowa.config)
    algo.set_stage(2)
    real = _pong_batch(pong_store, batch=2, seed=1)
    syn = synthesize_segments(jowa, _pong_batch(pong_store, batch=2, seed=2))
    batch = {**real, **{f"syn_{k}": v for k, v in syn.items()}}
    jowa.model.eval()  # no dropout: the brute force below sees the same function
    _, metrics = algo.loss(batch)
    support = jowa.model.world.support
    valid = jowa.actions.valid_mask(real["game_id"])[0]

    def q_of(tokens, actions, b, t):
        with torch.no_grad():
            logits = jowa.model.world(tokens[b : b + 1], actions[b : b + 1], real["game_id"][:1])["q_logits"][0, t]
        return [float((torch.softmax(logits[a].float(), -1) * support).sum()) for a in range(18)]

    real_tokens = jowa.model.tokenizer.encode(real["obs"]).long()
    real_actions = jowa.actions.full(real["action"], real["game_id"])
    ups = [q_of(real_tokens, real_actions, b, t)[int(real_actions[b, t])]
           for b in range(2) for t in range(real_actions.shape[1]) if real["mask"][b, t]]
    downs = []
    for b in range(2):
        for t in range(syn["tokens"].shape[1]):
            if syn["imagined"][b, t] and syn["mask"][b, t]:
                q = q_of(syn["tokens"], syn["action"], b, t)
                downs.append(math.log(sum(math.exp(q[a]) for a in range(18) if valid[a])))
    assert downs, "the planner imagined no state"
    assert float(metrics["loss/combo_real"]) == pytest.approx(sum(ups) / len(ups), abs=1e-4)
    assert float(metrics["loss/combo_synthetic"]) == pytest.approx(sum(downs) / len(downs), abs=1e-4)
    assert float(metrics["loss/combo"]) == pytest.approx(sum(downs) / len(downs) - sum(ups) / len(ups), abs=2e-4)


@pytest.mark.slow
def test_jowa_protocol_end_to_end_new_task_embedding(tmp_path, pong_store):
    settings = JOWAConfig(target_update_period=50)
    src_algo = JOWA.build("jowa-tiny", SOURCE_GAMES, settings, seed=3)
    source = _source_run(tmp_path / "jowa-pretrain", src_algo, "jowa", "jowa-tiny", settings)
    config = FinetuneConfig.from_params(checkpoint=source, game="Pong", dataset=str(pong_store), steps=3,
                                        batch_size=4, eval_episodes=1, eval_max_steps=5, num_envs=1,
                                        planning_horizon=1, output_dir=str(tmp_path / "ft"), device="cpu")
    assert [(s.name, s.steps) for s in config.stages()] == [("stage1", 1), ("stage2", 2)]
    result = finetune(config, progress=False)
    src, tuned = _weights(source), _weights(result.run_dir)
    for k in ("world.task_obs_emb.weight", "world.task_act_emb.weight"):
        assert tuned[k].shape[0] == 2  # Pong (new, row 0) and Breakout
        assert torch.equal(tuned[k][1], src[k][0])  # the old game's row: untouched
    # Every component trained (the tokenizer too): e.g. the GPT's and the tokenizer's weights moved.
    assert not torch.equal(tuned["world.gpt.pos_emb.weight"], src["world.gpt.pos_emb.weight"])
    assert any(not torch.equal(tuned[k], src[k]) for k in tuned if k.startswith("tokenizer.encoder"))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "loss/combo" in records[-1] and "loss/td_synthetic" in records[-1]
    report = json.loads((result.run_dir / "config.json").read_text())["resolved"]["transfer"]
    assert set(report["new"]) == {"world.task_obs_emb.weight[Pong]", "world.task_act_emb.weight[Pong]"}
    # The fine-tuned JOWA checkpoint plans through notebook 05's evaluator on its new game.
    out = evaluate_run(EvaluateConfig(checkpoint=str(result.run_dir), episodes=1, num_envs=1, max_steps=3,
                                      planning_horizon=1, output=str(tmp_path / "j.json"), device="cpu"),
                       progress=False)
    assert list(out["per_game"]) == ["Pong"]
    with pytest.raises(ValueError, match="the jowa protocol trains every component"):
        FinetuneConfig.from_params(checkpoint=source, game="Pong", encoder="frozen")


# ------------------------------------------------------------------------------- transfer figures


def _finetune_run(path, method: str, seed: int, scores: list[float], game: str = "Pong", cap: int = 27_000):
    run = Run(path)
    run.create("finetune", {"checkpoint": "src", "game": game, "method": method, "seed": seed},
               {"algo": "scaled_ql", "model": "resnet-tiny", "method": method, "encoder": "finetuned",
                "report": "final", "eval_games": [game], "games": [game], "stages": [{"name": "train", "subdir": ""}]})
    (run.path / "eval").mkdir()
    doc = {"per_game": {game: {"mean": sum(scores) / len(scores), "scores": scores}}, "max_agent_steps": cap,
           "epsilon": 0.001, "comparable_to_papers": cap == 27_000}
    (run.path / "eval" / "scores.json").write_text(json.dumps(doc))
    return run.path


def test_transfer_figure_from_finetune_runs(tmp_path):
    from workbench.viz.analysis import build_figures, read_run, transfer_figure

    dirs = [_finetune_run(tmp_path / f"{m}{s}", m, s, [v, v + 2.0])
            for m, vals in (("transfer", (-10.0, -6.0)), ("scratch", (-20.0, -18.0))) for s, v in enumerate(vals)]
    fig, text = transfer_figure([read_run(d) for d in dirs], reps=200)
    # Pong: random -20.7, DQN 19.5 (JOWA Table 17). A run is a seed: its mean score.
    dqn = lambda x: (x + 20.7) / (19.5 + 20.7)  # noqa: E731
    bars = {t.name: t for t in fig.data if t.type == "bar" and t.xaxis == "x"}
    pre = bars["Scaled QL (pretrained), resnet-tiny"]
    want = [dqn(-9.0), dqn(-5.0)]
    assert list(pre.x) == ["Pong"] and pre.y[0] == pytest.approx(sum(want) / 2)
    assert pre.error_y.array[0] == pytest.approx(max(want) - sum(want) / 2)
    # The papers' Pong values are drawn as references, marked as the paper's.
    marks = {t.name: t for t in fig.data if t.type == "scatter"}
    assert marks["paper: JOWA (150M) [JOWA Table 17]"].y[0] == pytest.approx(dqn(17.7))
    assert marks["paper: JOWA (150M) [JOWA Table 3, its 5 games]"].y[0] == pytest.approx(0.647)
    assert "1.45" in fig.layout.title.text and "runs = seeds" in text
    ratio = (dqn(-9.0) + dqn(-5.0)) / (dqn(-19.0) + dqn(-17.0))
    assert f"/ scratch = {ratio:.2f}" in fig.layout.title.text
    # A truncated evaluation draws no paper values and says so.
    cut = [_finetune_run(tmp_path / f"cut{s}", "transfer", s, [-20.0], cap=100) for s in range(2)]
    fig2, text2 = transfer_figure([read_run(d) for d in cut], reps=100)
    assert not [t for t in fig2.data if t.type == "scatter"] and "not comparable" in fig2.layout.title.text
    # build_figures keeps fine-tuning runs out of the pretraining comparison.
    rep = build_figures(dirs, tmp_path / "figs", png=False, reps=100)
    assert "transfer" in rep.figures and not rep.runs and len(rep.finetune_runs) == 4
    assert "Fine-tuning runs" in (tmp_path / "figs" / "README.md").read_text()


# ------------------------------------------------------------------------------- MGDT (DT pre-trained)


@pytest.fixture(scope="module")
def dt_source(tmp_path_factory):
    from workbench.algos.mgdt import MGDTAlgo, MGDTSettings

    settings = MGDTSettings()
    algo = MGDTAlgo.build("mgdt-tiny", SOURCE_GAMES, settings, seed=13)
    run = Run(tmp_path_factory.mktemp("dt") / "pretrain")
    run.create("pretrain", {}, {"algo": "mgdt", "model": "mgdt-tiny", "games": SOURCE_GAMES,
                                "settings": dataclasses.asdict(settings), "stages": [{"name": "train", "subdir": ""}]})
    ckpt_io.save_checkpoint(run.path, 100, algo.model)
    return str(run.path)


@pytest.mark.slow
def test_dt_transfer_starts_from_every_weight_of_the_mgdt_checkpoint(dt_source, tmp_path):
    from workbench.algos.mgdt import MGDTAlgo
    from workbench.transfer import load_partial

    config = FinetuneConfig.from_params(checkpoint=dt_source, method="dt_transfer", output_dir=str(tmp_path / "dt"),
                                        **FT)
    assert config.games == ("Pong", "Breakout") and config.effective_split == "finetune_1pct_episodes"
    src = _weights(dt_source)
    # Loading alone (what the job does before training): every tensor is the checkpoint's, bit for bit;
    # a fresh build of another seed differs from it, so a loader that copied nothing would fail.
    fresh = MGDTAlgo.build("mgdt-tiny", config.games, config.settings, seed=config.seed)
    assert any(not torch.equal(v, src[k]) for k, v in fresh.model.state_dict().items())
    report = load_partial(config.source_checkpoint, fresh, config.games,
                          transfer=("embeddings", "transformer", "heads"), reinitialize=(), source_games=SOURCE_GAMES)
    assert all(torch.equal(v, src[k]) for k, v in fresh.model.state_dict().items())
    assert sorted(report.transferred) == sorted(src) and report.new == [] and report.reinitialized == []

    result = finetune(config, progress=False)
    resolved = Run(result.run_dir).resolved
    assert resolved["protocol"] == "mgdt" and resolved["method"] == "dt_transfer"
    assert sorted(resolved["transfer"]["transferred"]) == sorted(src)
    tuned = _weights(result.run_dir)
    assert any(not torch.equal(tuned[k], src[k]) for k in src)  # 4 steps trained it
    out = evaluate_run(EvaluateConfig(checkpoint=str(result.run_dir), episodes=1, num_envs=1, max_steps=10,
                                      output=str(tmp_path / "dt.json"), device="cpu"), progress=False)
    assert list(out["per_game"]) == ["Pong"]


@pytest.mark.parametrize("method, message", [("bc", "dt_transfer | scratch"), ("transfer", "dt_transfer | scratch")])
def test_mgdt_checkpoints_take_dt_transfer_or_scratch(dt_source, method, message):
    with pytest.raises(ValueError, match=re.escape(f"valid for it: {message}")):
        FinetuneConfig.from_params(checkpoint=dt_source, method=method, **FT)


def test_dt_transfer_needs_an_mgdt_checkpoint(q_source):
    with pytest.raises(ValueError, match=re.escape("valid for it: transfer | scratch | bc")):
        FinetuneConfig.from_params(checkpoint=q_source, method="dt_transfer", **FT)

"""JOWA fine-tuning details against the paper (003), with the reference code's choices as switches.

- One learning rate for every component (App. E.2: "learning rate of 0.00005"), the tokenizer
  too; the reference code's tokenizer lr (1e-4, config/finetune_150M.yaml) is a setting.
- Evaluation's beam width per game from its number of valid actions (App. E.3: K = 2 below 10,
  else K in {3, 4}; Table 16).
- COMBO's logsumexp term over the imagined states (paper, Eq. 4) or over every state of the batch
  (the reference code's jowa_model.py, ``q_penalty=combo``).

Expectations are hand-computed numbers and brute-force sums, not the code's own output. Names new
in this change are reached through their modules inside each test, so each test fails on its own
(not at collection) on code without them.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from shared_paths import DQN_FIXTURES

from workbench import checkpoint as ckpt_io
from workbench import planner as P
from workbench.algos import jowa_finetune as JF
from workbench.algos.base import EvalOptions
from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.algos.jowa_finetune import JOWAFinetune, synthesize_segments
from workbench.finetune import FinetuneConfig
from workbench.games import num_actions
from workbench.run import Run
from workbench.train import TrainConfig, build_optimizer

SOURCE_GAMES = ["Breakout"]
CPU = torch.device("cpu")


def _source_run(path, settings: dict) -> str:
    """A pretrained JOWA run folder on Breakout whose recorded settings are ``settings``."""
    algo = JOWA.build("jowa-tiny", SOURCE_GAMES, JOWAConfig(), seed=3)
    run = Run(path)
    run.create("pretrain", {}, {"algo": "jowa", "model": "jowa-tiny", "games": SOURCE_GAMES, "settings": settings,
                                "stages": [{"name": "stage1", "subdir": "stage1"}, {"name": "stage2", "subdir": ""}]})
    ckpt_io.save_checkpoint(run.path, 100, algo.model, target=algo.target_model)
    return str(run.path)


@pytest.fixture(scope="module")
def jowa_source(tmp_path_factory):
    # Pretrained with the paper's tokenizer lr of pretraining (Table 12: 1e-4), recorded in the run.
    return _source_run(tmp_path_factory.mktemp("jowa") / "pretrain", dataclasses.asdict(JOWAConfig()))


def _group_lrs(config: FinetuneConfig) -> dict[str, dict[str, float]]:
    """Per stage, the learning rate of each optimizer group the trainer builds for the fine-tuning."""
    settings = config.settings
    algo = config.protocol.wrap(JOWA.build(config.model, config.games, settings, seed=0), settings)
    out = {}
    for stage in config.stages():
        algo.set_stage(1 if stage.name == "stage1" else 2)  # what JOWA's protocol does on entering it
        optimizer = build_optimizer(algo, TrainConfig(steps=stage.steps, lr=stage.lr,
                                                      weight_decay=stage.weight_decay), CPU)
        out[stage.name] = {g.get("name", "?"): g["lr"] for g in optimizer.param_groups}
    return out


# ------------------------------------------------------------------------------- learning rates


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_every_component_finetunes_at_5e_5(jowa_source, preset):
    config = FinetuneConfig.from_params(checkpoint=jowa_source, game="Robotank", preset=preset, device="cpu")
    lrs = _group_lrs(config)
    assert set(lrs) == {"stage1", "stage2"}
    for stage, groups in lrs.items():
        assert "tokenizer" in groups, stage  # the tokenizer trains in both fine-tuning stages
        assert groups == {name: 5e-5 for name in groups}, (stage, groups)


def test_a_users_lr_reaches_the_tokenizer_too(jowa_source):
    config = FinetuneConfig.from_params(checkpoint=jowa_source, game="Robotank", lr=2e-5, device="cpu")
    for groups in _group_lrs(config).values():
        assert groups == {name: 2e-5 for name in groups}


def test_reference_tokenizer_lr_is_a_setting(jowa_source):
    config = FinetuneConfig.from_params(checkpoint=jowa_source, game="Robotank", device="cpu",
                                        algo_args={"finetune_tokenizer_lr": 1e-4})
    for groups in _group_lrs(config).values():
        assert groups.pop("tokenizer") == 1e-4  # config/finetune_150M.yaml: tokenizer.learning_rate
        assert groups == {name: 5e-5 for name in groups}


def test_old_source_settings_load_with_the_paper_defaults(tmp_path):
    recorded = dataclasses.asdict(JOWAConfig())
    for new in ("finetune_tokenizer_lr", "combo_penalty"):
        recorded.pop(new, None)  # a run recorded before these settings existed
    source = _source_run(tmp_path / "old", recorded)
    config = FinetuneConfig.from_params(checkpoint=source, game="Robotank", device="cpu")
    assert config.settings.finetune_tokenizer_lr == 0.0
    assert config.settings.combo_penalty == "paper"
    with pytest.raises(ValueError, match="combo_penalty"):
        FinetuneConfig.from_params(checkpoint=source, game="Robotank", device="cpu",
                                   algo_args={"combo_penalty": "imagined"})
    with pytest.raises(ValueError, match="finetune_tokenizer_lr"):
        JOWAConfig(finetune_tokenizer_lr=-1e-4)


# ------------------------------------------------------------------------------- beam width


def test_paper_beam_width_rule_by_hand():
    # App. E.3: "K to 2 if the valid action space size is less than 10, otherwise K in {3, 4}".
    rule = P.paper_beam_width
    assert [rule(n) for n in (1, 4, 6, 9)] == [2, 2, 2, 2]
    assert [rule(n) for n in (10, 14, 18)] == [3, 3, 3]
    assert rule(18, wide=4) == 4
    with pytest.raises(ValueError):
        rule(18, wide=5)
    with pytest.raises(ValueError):
        rule(0)


def test_paper_beam_width_agrees_with_table_16():
    # Table 16 (game: K), K from the rule's range for the game's minimal action set; Atlantis is
    # left out: the table prints 18 actions and K = 3, but its minimal set has 4.
    table16 = {"Assault": 2, "BeamRider": 2, "Berzerk": 4, "Carnival": 2, "Centipede": 4, "ChopperCommand": 4,
               "DemonAttack": 2, "NameThisGame": 2, "Phoenix": 2, "Seaquest": 3, "SpaceInvaders": 2,
               "StarGunner": 3, "TimePilot": 3, "Zaxxon": 3}
    for game, k in table16.items():
        n = num_actions(game)
        assert P.paper_beam_width(n, wide=k if n >= 10 else 3) == k, game


def test_finetuned_evaluation_plans_with_the_papers_beam_per_game():
    # The five held-out games and the source game, with their action counts by hand:
    # Gravitar 18, MsPacman 9, Pong 6, Robotank 18, YarsRevenge 18, Breakout 4.
    games = ["Gravitar", "MsPacman", "Pong", "Robotank", "YarsRevenge", "Breakout"]
    want = (3, 2, 2, 3, 3, 2)
    jowa = JOWA.build("jowa-tiny", games, JOWAConfig(), seed=0)
    algo = JOWAFinetune(jowa, jowa.config)
    policy = algo.policy(None)
    assert policy.horizon == 2
    assert tuple(int(k) for k in policy.beam_width.expand(len(games))) == want
    # A width of 0 leaves K to the rule, per game or for all; a width the options give is kept.
    assert algo.eval_options(EvalOptions(beam_width=0)).beam_width == want
    assert algo.eval_options(EvalOptions(beam_width=(0, 1, 0, 4, 0, 0))).beam_width == (3, 1, 2, 4, 3, 2)
    assert algo.eval_options(EvalOptions(planning_horizon=1, beam_width=2)) == EvalOptions(1, 2)
    assert tuple(int(k) for k in algo.inspectable_policy().planner.beam_width.expand(len(games))) == want
    # the fine-tuning job leaves K to the rule unless the user gives one
    job_default = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}["beam_width"]
    assert algo.eval_options(EvalOptions(beam_width=job_default)).beam_width == want


# ------------------------------------------------------------------------------- COMBO


def _lse(row, valid):
    return math.log(sum(math.exp(q) for q, ok in zip(row, valid) if ok))


def _combo_rows():
    """Real rows (3), synthetic rows (4: 2 real prefix, 2 imagined), 5-action games in 18 slots."""
    g = torch.Generator().manual_seed(1)
    q_real = torch.randn(3, 18, generator=g) * 2
    q_syn = torch.randn(4, 18, generator=g) * 2
    valid_real = torch.zeros(3, 18, dtype=torch.bool)
    valid_real[:, :5] = True
    valid_syn = torch.zeros(4, 18, dtype=torch.bool)
    valid_syn[:, [0, 1, 3, 7, 11]] = True
    a_real = torch.tensor([0, 4, 2])
    imagined = torch.tensor([False, False, True, True])
    return q_real, valid_real, a_real, q_syn, valid_syn, imagined


def test_combo_penalty_paper_covers_imagined_states_only():
    q_real, valid_real, a_real, q_syn, valid_syn, imagined = _combo_rows()
    penalty, down, up = JF.combo_penalty("paper", q_real, valid_real, a_real, q_syn, valid_syn, imagined)
    downs = [_lse(q_syn[i].tolist(), valid_syn[i].tolist()) for i in (2, 3)]
    ups = [float(q_real[j, a_real[j]]) for j in range(3)]
    assert down.shape == (2,) and up.shape == (3,)
    assert float(penalty) == pytest.approx(sum(downs) / 2 - sum(ups) / 3, abs=1e-5)


def test_combo_penalty_reference_covers_every_state():
    q_real, valid_real, a_real, q_syn, valid_syn, imagined = _combo_rows()
    penalty, down, _ = JF.combo_penalty("reference", q_real, valid_real, a_real, q_syn, valid_syn, imagined)
    downs = ([_lse(q_syn[i].tolist(), valid_syn[i].tolist()) for i in range(4)]
             + [_lse(q_real[j].tolist(), valid_real[j].tolist()) for j in range(3)])
    ups = [float(q_real[j, a_real[j]]) for j in range(3)]
    assert down.shape == (7,)
    assert float(penalty) == pytest.approx(sum(downs) / 7 - sum(ups) / 3, abs=1e-5)
    with pytest.raises(ValueError, match="combo_penalty"):
        JF.combo_penalty("both", q_real, valid_real, a_real, q_syn, valid_syn, imagined)


@pytest.fixture(scope="module")
def pong_store(tmp_path_factory):
    from workbench.data.build import build_store

    return build_store(DQN_FIXTURES, tmp_path_factory.mktemp("pong") / "store", ["Pong"], [1], "all",
                       progress=False)


def _pong_batch(store, batch, seed):
    from workbench.data.sampler import SequenceSampler

    return next(iter(SequenceSampler(store, ("Pong",), batch, seq_len=6, seed=seed)))


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_stage2_loss_uses_the_chosen_combo_penalty(pong_store, mode):
    jowa = JOWA.build("jowa-tiny", ["Pong"], JOWAConfig(combo_penalty=mode), seed=6)
    algo = JOWAFinetune(jowa, jowa.config)
    algo.set_stage(2)
    real = _pong_batch(pong_store, 2, seed=1)
    syn = synthesize_segments(jowa, _pong_batch(pong_store, 2, seed=2))
    batch = {**real, **{f"syn_{k}": v for k, v in syn.items()}}
    jowa.model.eval()  # no dropout: the brute force below sees the same function
    _, metrics = algo.loss(batch)
    support = jowa.model.world.support
    valid = jowa.actions.valid_mask(real["game_id"])[0].tolist()

    def q_of(tokens, actions, b, t):
        with torch.no_grad():
            logits = jowa.model.world(tokens[b : b + 1], actions[b : b + 1], real["game_id"][:1])["q_logits"][0, t]
        return [float((torch.softmax(logits[a].float(), -1) * support).sum()) for a in range(18)]

    real_tokens = jowa.model.tokenizer.encode(real["obs"]).long()
    real_actions = jowa.actions.full(real["action"], real["game_id"])
    ups, downs = [], []
    for b in range(2):
        for t in range(6):
            if real["mask"][b, t]:
                q = q_of(real_tokens, real_actions, b, t)
                ups.append(q[int(real_actions[b, t])])
                if mode == "reference":
                    downs.append(_lse(q, valid))
            if syn["mask"][b, t] and (syn["imagined"][b, t] or mode == "reference"):
                downs.append(_lse(q_of(syn["tokens"], syn["action"], b, t), valid))
    assert syn["imagined"].any(), "the planner imagined no state"
    want = sum(downs) / len(downs) - sum(ups) / len(ups)
    assert float(metrics["loss/combo"]) == pytest.approx(want, abs=2e-4)

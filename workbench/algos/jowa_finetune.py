"""JOWA's offline fine-tuning (paper 003, Sec. 4.3 and App. E.2): the protocol JOWA declares.

5k transitions drawn uniformly from the last 20% (expert) of the held-out game's data (split
``finetune_5k_expert``). Every part is transferred; the new game gets new task-embedding rows
(and its action mask from its name), and every component is trained in both stages (the
tokenizer too), all at one learning rate: App. E.2's 5e-5 (or the user's ``lr``; the setting
``finetune_tokenizer_lr`` gives the tokenizer its own, e.g. the reference code's 1e-4). Stage 1:
3k steps on real segments with ``L_tokenizer + beta L_world + L_action`` (TD + CQL). Stage 2: 7k
steps; each batch is 3/4 real 6-step segments (24 of 32) and 1/4 synthetic ones (8), whose last 2
steps the planner imagines (beam search with H = K = 2 for every game, App. E.2: its chosen
actions, the world model's predicted rewards and greedily decoded frame tokens; no pixels), under
the COMBO loss instead of CQL (``combo_penalty``): Q is pushed down on the imagined states
(setting ``combo_penalty='paper'``, the default; ``'reference'``: on every step of the batch, as
the reference code does) and up on the dataset's state-actions, and the TD error covers both
parts. ``scratch`` trains the same model from a random initialization (the paper: 100k steps for
JOWA-150M (scratch), split 3:7 here).

Evaluation plans with H = 2 and the paper's beam width per game (App. E.3,
``planner.paper_beam_width``: 2 below 10 valid actions, else 3) when the evaluation options leave
K to the rule (no options, or a beam width of 0); a width the options give is used as given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from workbench import losses as L
from workbench.algos.base import (
    Algo,
    AlgoSpec,
    Batches,
    EvalOptions,
    FinetuneProtocol,
    FinetuneScale,
    StageContext,
    stage_iterator,
)
from workbench.data.sampler import SequenceSampler
from workbench.models.world_action import action_losses
from workbench.planner import beam_search, paper_beam_width

if TYPE_CHECKING:  # jowa.py imports this module to declare its protocol
    from workbench.algos.jowa import JOWA

__all__ = ["COMBO_PENALTIES", "JOWA_FINETUNE", "JOWAFinetune", "JOWAFinetuneProtocol", "combo_penalty",
           "jowa_finetune_scale", "synthesize_segments"]

# Stage 2 (App. E.2): 6-step segments whose last 2 steps the planner synthesizes with H = K = 2,
# in batches of 3/4 real and 1/4 synthetic segments. K = 2 for every game here: App. E.2 says "we
# set both the planning horizon and the beam width to 2 for all fine-tuning experiments" (the
# reference config/finetune_150M.yaml: planning_beam_width 2); the per-game rule of App. E.3
# (``planner.paper_beam_width``) is the evaluation's.
SEGMENT_STEPS = 6
SYNTHETIC_STEPS = 2
PLAN_HORIZON = 2
PLAN_BEAM = 2
SYNTHETIC_FRACTION = 0.25

COMBO_PENALTIES = ("paper", "reference")
"""Values of the setting ``combo_penalty``: the states COMBO's logsumexp term covers (``combo_penalty``)."""


class JOWAFinetune:
    """JOWA's fine-tuning algorithm around a built :class:`~workbench.algos.jowa.JOWA`.

    Every component trains in both stages. Stage 1, real segments: ``L_tokenizer + beta L_world +
    L_action`` (C51 TD + CQL). Stage 2: a batch of real 6-step segments plus synthetic ones
    (``syn_*`` keys, from :func:`synthesize_segments`): ``L_tokenizer + beta L_world`` on the real
    part, C51 TD on both parts' transitions, and COMBO instead of CQL: ``alpha (E_imagined[
    logsumexp_a Q] - E_real[Q(s, a)])`` (:func:`combo_penalty`; settings ``combo_penalty``). Every
    component trains at the trainer's lr (``finetune_tokenizer_lr`` > 0: the tokenizer at its own).
    The model, its checkpoints and its policy are JOWA's own, so the run evaluates and loads like a
    pretrained JOWA run; evaluation's beam width follows App. E.3 where the options leave it open
    (:meth:`eval_options`).
    """

    target_model = None

    def __init__(self, jowa: JOWA, settings: Any) -> None:
        self.jowa = jowa
        self.config = settings
        self.stage = 1

    # Algo protocol: the JOWA model and its policies
    @property
    def model(self) -> Any:
        return self.jowa.model

    @property
    def games(self) -> Any:
        return self.jowa.games

    def weight_parts(self) -> dict[str, tuple[str, ...]]:
        return dict(self.jowa.weight_parts())

    def game_rows(self, games: Any) -> dict[str, tuple[int, ...]]:
        return dict(self.jowa.game_rows(games))

    def update_target(self) -> None:
        self.jowa.update_target()

    def to(self, device: Any) -> JOWAFinetune:
        self.jowa.to(device)
        return self

    def to_channels_last(self) -> JOWAFinetune:
        return self

    def eval_options(self, options: EvalOptions | None = None) -> EvalOptions:
        """The options the planner runs with: ``None`` = H = 2 and App. E.3's K for each game of the
        model (``planner.paper_beam_width`` of its number of valid actions); a beam width of 0, for
        every game or in a per-game tuple, stands for that rule; other widths are kept."""
        options = options or EvalOptions(beam_width=0)
        rule = tuple(paper_beam_width(int(n)) for n in self.jowa.actions.num_actions)
        width = options.beam_width
        if isinstance(width, int):
            resolved: int | tuple[int, ...] = rule if width == 0 else width
        else:
            if len(width) != len(rule):
                raise ValueError(f"beam_width per game needs {len(rule)} entries (the model's games), got {len(width)}")
            resolved = tuple(r if w == 0 else int(w) for w, r in zip(width, rule))
        return dataclasses.replace(options, beam_width=resolved)

    def policy(self, options: EvalOptions | None = None) -> Any:
        return self.jowa.policy(self.eval_options(options))

    def inspectable_policy(self, options: EvalOptions | None = None) -> Any:
        return self.jowa.inspectable_policy(self.eval_options(options))

    def set_stage(self, stage: int) -> None:
        """Both fine-tuning stages train every component (the target Q head aside)."""
        self.jowa.stage = 1  # param_groups: the tokenizer group (its own lr) is included
        self.stage = stage
        self.model.requires_grad_(True)
        self.model.world.target_q_head.requires_grad_(False)

    def param_groups(self) -> list[dict[str, Any]]:
        """JOWA's groups at one learning rate (App. E.2: 5e-5 for fine-tuning): the tokenizer group
        drops pretraining's ``tokenizer_lr`` and takes the trainer's lr like the world groups, or
        ``finetune_tokenizer_lr`` when that is set (> 0)."""
        groups = []
        for group in self.jowa.param_groups():
            if group.get("name") == "tokenizer":
                group = {k: v for k, v in group.items() if k != "lr"}
                if self.config.finetune_tokenizer_lr > 0:
                    group["lr"] = self.config.finetune_tokenizer_lr
            groups.append(group)
        return groups

    def batches(self, stage: str, context: StageContext) -> Batches:
        """Stage 1: real segments of the model's length. Stage 2: 6-step segments, 3/4 real and
        1/4 to synthesize (from their own sampler stream), synthesized with the current model."""
        if stage == "stage1":
            return stage_iterator(SequenceSampler(context.store, context.games, context.batch_size,
                                                  seq_len=self.jowa.seq_len, seed=context.seed))
        n_syn = max(1, round(context.batch_size * SYNTHETIC_FRACTION))
        n_real = max(1, context.batch_size - n_syn)
        real = SequenceSampler(context.store, context.games, n_real, seq_len=SEGMENT_STEPS, seed=context.seed)
        seeds = SequenceSampler(context.store, context.games, n_syn, seq_len=SEGMENT_STEPS, seed=context.seed + 7_919)

        def from_step(start: int) -> Iterator[dict[str, Tensor]]:
            real_it, seed_it = stage_iterator(real)(start), stage_iterator(seeds)(start)
            for batch, base in zip(real_it, seed_it):
                syn = synthesize_segments(self.jowa, base, synthetic_steps=SYNTHETIC_STEPS, horizon=PLAN_HORIZON,
                                          beam_width=PLAN_BEAM)
                yield {**batch, **{f"syn_{k}": v for k, v in syn.items()}}

        return from_step

    def loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        jowa, cfg = self.jowa, self.config
        tok_loss, metrics = jowa.tokenizer_loss(batch)
        world = jowa.world_pass(batch)
        metrics.update(world.metrics)
        if self.stage == 1 or "syn_tokens" not in batch:
            a_loss, a_metrics = jowa.action_loss(world, batch)
            metrics.update(a_metrics)
            loss = tok_loss + cfg.beta * world.world_loss + a_loss
            metrics["loss/total"] = loss.detach()
            return loss, metrics
        # Stage 2: TD on real and synthetic transitions, COMBO instead of CQL.
        syn_actions = batch["syn_action"].long()  # ALE ids already (the planner's)
        syn_out = jowa.model.world(batch["syn_tokens"].long(), syn_actions, batch["syn_game_id"])
        syn_valid = jowa.actions.valid_mask(batch["syn_game_id"])
        td_real, _ = jowa.action_loss(world, batch, cql_alpha=0.0)
        # TD samples of the synthetic part: the transitions the planner chose. action_losses takes
        # step t when mask[t] and (terminal[t] or mask[t + 1]): the last step only bootstraps.
        last = torch.zeros_like(batch["syn_mask"].bool())
        last[:, -1] = True
        syn_td_mask = batch["syn_mask"].bool() & (batch["syn_td"].bool() | last)
        td_syn, _ = action_losses(jowa.model.world, syn_out, syn_actions, batch["syn_reward"], batch["syn_terminal"],
                                  syn_td_mask, syn_valid, gamma=cfg.gamma, cql_alpha=0.0)
        support = jowa.model.world.support
        mask, actions = world.mask, world.actions
        q_real_all = L.expected_q(world.out["q_logits"], support)  # (B, L, 18)
        q_real, a_real = q_real_all[mask], actions[mask]  # (M, 18) real steps
        v_real = jowa.actions.valid_mask(batch["game_id"])[:, None, :].expand_as(q_real_all)[mask]
        q_syn = L.expected_q(syn_out["q_logits"], support)  # (B, L, 18)
        syn_rows = batch["syn_mask"].bool()  # the synthetic segments' steps: real prefix + imagined
        v_syn = syn_valid[:, None, :].expand_as(q_syn)[syn_rows]
        combo, down, up = combo_penalty(cfg.combo_penalty, q_real, v_real, a_real, q_syn[syn_rows], v_syn,
                                        batch["syn_imagined"].bool()[syn_rows])
        n_real, n_syn = float(mask.any(1).sum()), float(batch["syn_mask"].any(1).sum())
        frac = n_real / max(n_real + n_syn, 1.0)
        td = frac * td_real + (1 - frac) * td_syn  # TD over d_f: the batch's mix of real and synthetic
        a_loss = td + cfg.cql_alpha * combo
        loss = tok_loss + cfg.beta * world.world_loss + a_loss
        with torch.no_grad():
            metrics.update({
                "loss/action": a_loss.detach(), "loss/td": td.detach(), "loss/td_real": td_real.detach(),
                "loss/td_synthetic": td_syn.detach(), "loss/combo": combo.detach(),
                # The pushed-down term (imagined states; under 'reference' every state of the batch).
                "loss/combo_synthetic": down.mean().detach() if down.numel() else torch.zeros(()),
                "loss/combo_real": up.mean().detach(), "q/data_mean": q_real.gather(1, a_real[:, None]).mean(),
                "loss/total": loss.detach(),
            })
        return loss, metrics


def combo_penalty(mode: str, q_real: Tensor, valid_real: Tensor, actions_real: Tensor, q_syn: Tensor,
                  valid_syn: Tensor, imagined: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """COMBO's conservative term of stage 2 (its weight, ``cql_alpha``, aside), over the rows of a batch.

    ``q_real`` (N, 18) expected Q of the real segments' steps, ``valid_real`` (N, 18) their games'
    actions, ``actions_real`` (N,) the dataset's actions (ALE ids); ``q_syn`` (M, 18) and
    ``valid_syn`` of the synthetic segments' steps (their real prefix and the imagined steps),
    ``imagined`` (M,) bool marks the imagined ones. ``mode``:

    - ``paper``: ``mean_{imagined s} logsumexp_{a valid} Q(s, a) - mean_real Q(s, a_data)`` (Eq. 4:
      rho is the current policy's occupancy in the model's imagined MDP);
    - ``reference``: the logsumexp term over every row, real and synthetic (the reference code's
      jowa_model.py with q_penalty=combo: negatives over the whole mixed batch, positives over the
      real part only).

    Returns ``(penalty, down, up)``: the per-row terms of :func:`losses.combo_terms` and
    ``down.mean() - up.mean()`` (an empty term counts 0).
    """
    if mode not in COMBO_PENALTIES:
        raise ValueError(f"combo_penalty must be one of {' | '.join(COMBO_PENALTIES)}, got {mode!r}")
    if mode == "paper":
        q_down, v_down = q_syn[imagined], valid_syn[imagined]
    else:
        q_down, v_down = torch.cat([q_syn, q_real]), torch.cat([valid_syn, valid_real])
    down, up = L.combo_terms(q_down, v_down, q_real, actions_real)
    zero = q_real.new_zeros((), dtype=torch.float32)
    penalty = (down.mean() if down.numel() else zero) - (up.mean() if up.numel() else zero)
    return penalty, down, up


@torch.no_grad()
def synthesize_segments(jowa: JOWA, base: Mapping[str, Tensor], *, synthetic_steps: int = 2, horizon: int = 2,
                        beam_width: int = 2) -> dict[str, Tensor]:
    """Synthetic segments in token space: the last ``synthetic_steps`` steps of each real segment
    of ``base`` (a sequence batch, minimal-set actions) are replaced by what the planner imagines.

    For a segment of L steps, the first ``c = L - synthetic_steps`` are real (their frames
    tokenized by the current tokenizer, their actions mapped to ALE ids). Beam search (``horizon``
    = ``synthetic_steps``, ``beam_width``) runs from step ``c - 1`` (the real steps before it as
    context); the best path gives the actions of steps ``c-1 .. L-2``, their predicted rewards
    and terminations (``PlanResult.path_rewards``/``path_terminal``), and the greedily decoded
    tokens of frames ``c .. L-1`` (``path_tokens``). The last step's action (it feeds no loss)
    is the greedy action at its imagined frame. Returns ``tokens`` (B, L, 36), ``action`` (B, L)
    ALE ids, ``reward``, ``terminal`` (B, L), ``mask`` (steps that exist: real, or imagined before
    a predicted end), ``imagined`` (steps whose frame the model imagined), ``td`` (steps whose
    transition the planner chose: the synthetic TD samples), ``game_id`` (B,).
    """
    if synthetic_steps != horizon:
        raise ValueError(f"synthetic_steps ({synthetic_steps}) must equal the planning horizon ({horizon})")
    model = jowa.model
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        obs, game_id = base["obs"].to(device), base["game_id"].to(device)
        B, L = obs.shape[:2]
        c = L - synthetic_steps
        if c < 1:
            raise ValueError(f"segments of {L} steps cannot keep a real step before {synthetic_steps} synthetic ones")
        tokens = model.tokenizer.encode(obs).long()  # (B, L, 36)
        actions = jowa.actions.full(base["action"].to(device), game_id)
        valid = jowa.actions.valid_mask(game_id)
        real_mask = base["mask"].to(device).bool()
        plan = beam_search(
            model.world, tokens[:, c - 1], game_id, valid, horizon, beam_width, gamma=jowa.config.gamma,
            ctx_tokens=tokens[:, : c - 1], ctx_actions=actions[:, : c - 1], ctx_valid=real_mask[:, : c - 1],
            return_tree=True,
        )
        assert plan.path_tokens is not None and plan.path_actions is not None and plan.path_rewards is not None
        assert plan.path_terminal is not None and plan.path_valid is not None
        out_tokens, out_actions = tokens.clone(), actions.clone()
        reward = base["reward"].to(device).float().clone()
        terminal = base["terminal"].to(device).float().clone()
        mask = real_mask[:, :c].clone()
        # The real part must reach step c - 1 without ending: otherwise there is nothing to imagine.
        start_ok = real_mask[:, c - 1] & (terminal[:, : c - 1] == 0).all(1)
        alive = start_ok.clone()
        imagined = torch.zeros(B, L, dtype=torch.bool, device=device)
        td = torch.zeros(B, L, dtype=torch.bool, device=device)
        new_mask = [mask]
        for d in range(horizon):
            t = c - 1 + d  # the step whose action and reward the planner decides
            act = plan.path_actions[:, d]
            live = alive & (act >= 0)
            out_actions[:, t] = torch.where(live, act, out_actions[:, t])
            reward[:, t] = torch.where(live, plan.path_rewards[:, d], reward[:, t])
            terminal[:, t] = torch.where(live, plan.path_terminal[:, d].float(), torch.zeros_like(terminal[:, t]))
            td[:, t] = live
            out_tokens[:, t + 1] = torch.where(live[:, None], plan.path_tokens[:, d], out_tokens[:, t + 1])
            alive = live & ~plan.path_terminal[:, d]
            imagined[:, t + 1] = alive
            new_mask.append(alive[:, None])
        mask = torch.cat(new_mask, 1)
        last = L - 1
        q_last = model.world.q_values(model.world(out_tokens, out_actions, game_id)["q_logits"][:, last], valid)
        out_actions[:, last] = torch.where(mask[:, last], q_last.argmax(-1), out_actions[:, last])
        terminal[:, last] = torch.where(imagined[:, last], torch.zeros_like(terminal[:, last]), terminal[:, last])
        return {"tokens": out_tokens, "action": out_actions, "reward": reward, "terminal": terminal,
                "mask": mask & start_ok[:, None], "imagined": imagined, "td": td, "game_id": game_id}
    finally:
        model.train(was_training)


def jowa_finetune_scale(preset: str, model: str, method: str) -> FinetuneScale:
    """App. E.2 under ``paper`` (batch 32, lr 5e-5, 3k + 7k steps; scratch: 100k, split 3:7);
    seconds on 2 cores under ``cpu``."""
    # A recording of 6,000 steps: enough valid starts for the 5k-transition split.
    if preset == "paper":
        total = 100_000 if method == "scratch" else 10_000
        return FinetuneScale((("stage1", total * 3 // 10), ("stage2", total * 7 // 10)), batch_size=32, lr=5e-5,
                             eval_episodes=16, eval_max_steps=27_000, record_steps=6_000, snapshot_every=1_000,
                             log_every=100, checkpoint_every=1_000, settings={"target_update_period": 1000})
    steps, batch = (20, 8) if model.endswith("-tiny") else (4, 4)
    return FinetuneScale((("stage1", steps), ("stage2", steps)), batch_size=batch, lr=5e-5, eval_episodes=2,
                         eval_max_steps=100, record_steps=6_000, snapshot_every=10, log_every=5, checkpoint_every=100,
                         settings={"target_update_period": 50})


@dataclass(frozen=True)
class JOWAFinetuneProtocol(FinetuneProtocol):
    """The trainer drives a :class:`JOWAFinetune` that trains every component in both stages."""

    def wrap(self, algo: Algo, settings: Any) -> Algo:
        return JOWAFinetune(algo, settings)  # type: ignore[arg-type]

    def enter_stage(self, spec: AlgoSpec, algo: Algo, stage: str, context: StageContext) -> None:
        assert isinstance(algo, JOWAFinetune)
        algo.set_stage(1 if stage == "stage1" else 2)

    def batches(self, spec: AlgoSpec, algo: Algo, stage: str, context: StageContext) -> Batches:
        assert isinstance(algo, JOWAFinetune)
        return algo.batches(stage, context)


JOWA_FINETUNE = JOWAFinetuneProtocol(
    name="jowa", paper_split="finetune_5k_expert",
    held_out_games=("Gravitar", "MsPacman", "Pong", "Robotank", "YarsRevenge"),
    methods=("transfer", "scratch"), pretrained_methods=("transfer",), scale_fn=jowa_finetune_scale,
    stage_shares=(3, 7),
)

"""Decisions per second of a converted released JOWA model's planner on this machine; prints JSON.

    python benchmarks/bench_released_jowa.py [--tokenizer tokenizer.pt --world-model JOWA_40M.pt]
        [--size 40m] [--envs 4] [--horizon 2] [--beam 2] [--decisions 12] [--warmup 6] [--device cpu]
        [--reference-code PATH [--buffer-size 8]]

Converts the files with ``workbench.convert.convert_jowa`` into a temporary run folder, loads
it like any run (``workbench.run.load_algo``) and times its planner policy (``algo.policy``,
beam search with H = ``--horizon``, K = ``--beam``) deciding for ``--envs`` environments in one
batch (env i plays the run's game i), on real frames of those games (ALE, evaluation protocol).
Only ``policy.act`` is timed, after ``--warmup`` decisions that fill the context (5 steps for
H = 2), so every timed search has the full context; decisions/s counts one decision per
environment.

Without ``--tokenizer``/``--world-model`` the files are random ones with the released files'
exact keys and shapes (``tests/test_convert_jowa.py``'s generator): the speed of a model does not
depend on its values, except that a search stops early where the model predicts a termination;
``--full-search`` (default on for random files) sets the termination head to never predict one,
so every search does the full work, as the real model does on almost every step. With random
files it is set in the world-model file itself, so a reference run loads the same weights.

``--reference-code PATH``: a local checkout of the public JOWA code (github.com/CJReinforce/JOWA;
nothing of it is copied here, it is imported from PATH at run time). The same two files are
loaded into the reference's own modules (``src/models``: ``Tokenizer``, ``JOWAModel``, shapes
from its ``config/`` YAML files) and its own planner decides for the same environments, on the
same frames and histories, alternating with ours at every step (which one goes first alternates
too): one ``src/agent.py`` ``Agent`` per environment (its beam search is one environment per
call), each doing what ``Agent.act`` does with ``should_plan='beam_search'`` (tokenize the frame,
``update_memory``, ``plan_beam_search``) without its 0.1% epsilon-random actions; the executed
action then enters its memory as ``AgentEnv.step`` does. Its context is ``--buffer-size`` steps
(``common.num_given_steps``, 8 in ``config/eval.yaml``), of which the search uses the last
``max_blocks - H`` (6 with H = 2: 5 previous steps and the current frame, as ours).
What this takes to run it on a CPU, and nothing else:

- its Q head's dropout (p = 0.01 for 40M) lives in a functorch module that ``eval()`` does not
  reach; it is put in eval mode here, so its search is deterministic (greedy, as ours);
- its attention falls back to its own masked implementation where ``flash_attn`` is not
  installed; that path adds ``attn.mask`` buffers the released files do not have (they were
  saved with flash-attn), so the world model is loaded by key with only those buffers left at
  the values its constructor gives them (its ``Agent.load`` would stop on them); the tokenizer
  is loaded by ``Agent.load`` itself;
- modules it imports but this path never runs are stubbed when not installed: ``gym`` (its env
  wrappers), ``torchvision`` (LPIPS' VGG16 and ``WorldModelEnv.reset``), ``hydra`` (its entry
  points); ``LPIPS`` (a training loss whose constructor downloads VGG weights) is replaced by an
  empty module while the tokenizer is built.

Its planner, as shipped, decodes every imagined frame to pixels and scores rewards by the mode
of the reward head (ours: the expected value) and ignores predicted terminations (ours stops a
branch there; never, with ``--full-search``). The JSON reports decisions/s of both and their
ratio (also as a ratio of per-step medians, which a neighbour's burst of load on a few steps
moves less), how many decisions chose the same (ALE) action, and, for each decision that
differs, what ours chooses (untimed, same history) when its rewards are the reward head's mode,
as the reference's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from torch import nn

from workbench import envs, games
from workbench import planner as planner_module
from workbench.algos.base import EvalOptions
from workbench.convert import SIZES, convert_jowa
from workbench.run import load_algo

TESTS = Path(__file__).resolve().parents[1] / "tests"
NEVER_TERMINAL = (20.0, -20.0)
"""Termination-head output bias that makes every step non-terminal (softmax ~ (1, 0))."""


def random_release(folder: Path, size: str, never_terminal: bool = False) -> tuple[Path, Path]:
    """Random tokenizer.pt and JOWA_<size>.pt with the released layouts (the tests' generator);
    ``never_terminal`` writes `NEVER_TERMINAL` into the world model's termination head."""
    sys.path.insert(0, str(TESTS))
    gen: Any = importlib.import_module("test_convert_jowa")
    tok = gen.save(gen.materialize(gen.ref_tokenizer_layout(), seed=1, cheap=("lpips.",)), folder / "tokenizer.pt")
    world = gen.materialize(gen.ref_world_layout(*gen.SIZE_DIMS[size]), seed=2)
    if never_terminal:
        world["head_ends.head_module.2.bias"] = torch.tensor(NEVER_TERMINAL)
    wm = gen.save(world, folder / SIZES[size].release)
    return tok, wm


# ----------------------------------------------------------------------------- the public code


_STUBBED = ("gym", "torchvision", "hydra")


class _StubModule(types.ModuleType):
    """A stand-in for a module the reference imports but this path never runs: any attribute is
    a class (so ``class X(gym.Wrapper)`` and ``from gym.spaces.box import Box`` work)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


@contextlib.contextmanager
def _stubs(names: Sequence[str]) -> Iterator[list[str]]:
    """Stub the uninstalled modules among ``names`` (and their usual submodules) while importing."""
    subs = {"gym": ("spaces", "spaces.box", "utils"), "torchvision": ("models", "transforms", "transforms.functional"),
            "hydra": ("utils",)}
    added: list[str] = []
    for name in names:
        if importlib.util.find_spec(name) is not None:
            continue
        for full in (name, *(f"{name}.{s}" for s in subs.get(name, ()))):
            sys.modules[full] = _StubModule(full)
            added.append(full)
        for full in added:  # parents hold their submodules as attributes
            parent, _, child = full.rpartition(".")
            if parent in sys.modules and isinstance(sys.modules[parent], _StubModule):
                setattr(sys.modules[parent], child, sys.modules[full])
    try:
        yield added
    finally:
        for full in added:
            sys.modules.pop(full, None)


def import_reference(code: Path) -> dict[str, Any]:
    """The public code's modules, imported from ``code``/src (its scripts' own import layout)."""
    src = (code / "src").resolve()
    if not (src / "agent.py").is_file():
        raise FileNotFoundError(f"{code} is not a checkout of the public JOWA code (no src/agent.py)")
    clash = [m for m in ("agent", "utils", "models", "envs", "action_tokenizer", "MCTS") if m in sys.modules]
    if clash:
        raise RuntimeError(f"modules named like the reference's are already imported: {clash}")
    sys.path.insert(0, str(src))
    try:
        with _stubs(_STUBBED) as stubbed:
            mods: dict[str, Any] = {name: importlib.import_module(name) for name in (
                "agent", "action_tokenizer", "utils", "models.jowa_model", "models.transformer",
                "models.tokenizer", "models.tokenizer.tokenizer", "models.tokenizer.nets")}
    finally:
        sys.path.remove(str(src))
    for name, mod in mods.items():
        if not Path(mod.__file__ or "").resolve().is_relative_to(src):
            raise RuntimeError(f"{name} was imported from {mod.__file__}, not from {src}")
    mods["stubbed"] = stubbed
    return mods


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    data.pop("_target_", None)
    return data


def reference_models(ref: dict[str, Any], code: Path, size: str, device: torch.device) -> tuple[Any, Any]:
    """The reference's Tokenizer and JOWAModel built from its own config files (what its
    ``src/play.py`` instantiates through hydra), in eval mode with the Q head's dropout off."""
    name = f"JOWA_{size.upper()}"
    cfg = code / "config"
    tok_cfg = _yaml(cfg / "tokenizer" / "default.yaml")
    enc_cfg = tok_cfg["encoder"]["config"]
    enc_cfg.pop("_target_", None)
    nets, tok_mod = ref["models.tokenizer.nets"], ref["models.tokenizer.tokenizer"]
    saved_lpips = tok_mod.LPIPS
    tok_mod.LPIPS = nn.Identity  # a training loss; its constructor downloads VGG16 weights
    try:
        tokenizer = tok_mod.Tokenizer(
            tok_cfg["vocab_size"], tok_cfg["embed_dim"], nets.Encoder(nets.EncoderDecoderConfig(**enc_cfg)),
            nets.Decoder(nets.EncoderDecoderConfig(**enc_cfg)))  # decoder config: ${..encoder.config}
    finally:
        tok_mod.LPIPS = saved_lpips
    eval_cfg = _yaml(cfg / "eval.yaml")
    transformer = ref["models.transformer"].TransformerConfig(**_yaml(cfg / "transformer" / f"{name}.yaml"))
    critic_arch = types.SimpleNamespace(**_yaml(cfg / "critic_head" / f"{name}.yaml"))
    critic_train = types.SimpleNamespace(**eval_cfg["action"])
    world = ref["models.jowa_model"].JOWAModel(
        obs_vocab_size=tok_cfg["vocab_size"], act_vocab_size=ref["action_tokenizer"].ATARI_NUM_ACTIONS,
        config_transformer=transformer, config_critic_arch=critic_arch, config_critic_train=critic_train,
        device=device)
    return tokenizer.to(device), world.to(device)


def load_reference_world(world: nn.Module, path: Path, device: torch.device) -> list[str]:
    """Load a released world-model file into the reference's JOWAModel by key (the prefixes its
    ``Agent.load`` tries); only its non-flash attention's ``attn.mask`` buffers may be absent.
    Returns the keys left at their constructed values."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    state, left = {}, []
    for key in world.state_dict():
        found = next((p + key for p in ("_orig_mod.module.", "", "module.", "_orig_mod.") if p + key in ckpt), None)
        if found is None:
            left.append(key)
        else:
            state[key] = ckpt[found]
    if any(not k.endswith(".attn.mask") for k in left):
        raise KeyError(f"{path} lacks keys of the reference model: {[k for k in left if not k.endswith('.mask')]}")
    world.load_state_dict(state, strict=False)
    return left


def q_dropout_off(world: nn.Module, ref: dict[str, Any]) -> int:
    """Put the Q ensemble's functional copy (what its vmap calls; ``eval()`` does not reach it)
    in eval mode; returns how many Dropout modules that switched off."""
    n = 0
    for m in world.modules():
        if isinstance(m, ref["utils"].Ensemble):
            fn = m.vmap.__wrapped__
            n += sum(isinstance(d, nn.Dropout) and d.training for d in fn.modules())
            fn.eval()
    return n


class ReferencePlanner:
    """The public planner for N environments: one of its ``Agent`` per environment (its beam
    search takes one environment per call) over shared modules."""

    def __init__(self, ref: dict[str, Any], tokenizer: nn.Module, world: nn.Module, play: Sequence[str],
                 horizon: int, beam: int, buffer_size: int, device: torch.device) -> None:
        names = ref["action_tokenizer"].GAME_NAMES
        self.device = device
        self.agents = [ref["agent"].Agent(
            tokenizer, world, names.index(g), 1, torch.float32, buffer_size, device, should_plan="beam_search",
            beam_width=beam, horizon=horizon).to(device).eval() for g in play]

    def reset(self, i: int) -> None:
        self.agents[i].reset(1)

    @torch.no_grad()
    def act(self, i: int, frame: np.ndarray) -> int:
        """Agent.act with should_plan='beam_search', less its epsilon: an ALE action id."""
        agent = self.agents[i]
        obs = torch.from_numpy(np.ascontiguousarray(frame)).float().div(255)[None, None].to(self.device)
        agent.update_memory(agent.tokenizer.encode(obs, should_preprocess=True).tokens)
        return int(agent.plan_beam_search().reshape(-1)[0])

    def observe(self, i: int, ale_action: int) -> None:
        """The executed action enters the memory (``AgentEnv.step``)."""
        self.agents[i].update_memory(torch.tensor([[ale_action]], dtype=torch.long, device=self.device))


def _mode_reward(model: Any, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's reward rule (the reward head's mode, -1/0/1) with ours' termination rule."""
    _, terminal = _OUR_REWARD_TERM(model, h)
    return model.reward_head(h).float().argmax(-1).float() - 1.0, terminal


_OUR_REWARD_TERM = planner_module._reward_term


def _code_id(code: Path) -> dict[str, Any]:
    """Which public code ran: its git commit where it is a checkout, and the planner files' sha256."""
    out: dict[str, Any] = {"path": str(code.resolve())}
    head = code / ".git" / "HEAD"
    if head.is_file():
        ref = head.read_text().strip()
        target = code / ".git" / ref[5:] if ref.startswith("ref: ") else None
        out["commit"] = target.read_text().strip() if target is not None and target.is_file() else ref
    for f in ("src/agent.py", "src/envs/world_model_env.py", "src/models/jowa_model.py"):
        out.setdefault("sha256", {})[f] = hashlib.sha256((code / f).read_bytes()).hexdigest()[:16]
    return out


# ----------------------------------------------------------------------------- benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--world-model", default="")
    parser.add_argument("--size", default="40m", choices=sorted(SIZES))
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=2)
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=12, help="timed decisions per environment")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-search", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--reference-code", default="",
                        help="a checkout of github.com/CJReinforce/JOWA: also time its own planner, same frames")
    parser.add_argument("--buffer-size", type=int, default=8,
                        help="the reference agent's context in steps (common.num_given_steps)")
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        random_files = not (args.tokenizer and args.world_model)
        full = args.full_search == "yes" or (args.full_search == "auto" and random_files)
        tok, wm = random_release(root, args.size, never_terminal=full) if random_files else (
            Path(args.tokenizer), Path(args.world_model))
        t0 = time.perf_counter()
        run_games = games.resolve_games("jowa_15")[: max(args.envs, 1)]
        convert_jowa(tok, wm, root / "run", size=args.size, games=run_games)
        convert_s = time.perf_counter() - t0
        algo, run, _ = load_algo(root / "run", device=args.device)
        model_name = run.model
        if full and not random_files:
            world: Any = algo.model.world
            with torch.no_grad():
                world.term_head[-1].bias.copy_(torch.tensor(NEVER_TERMINAL))
        policy: Any = algo.policy(EvalOptions(planning_horizon=args.horizon, beam_width=args.beam))
        play = [run_games[i % len(run_games)] for i in range(args.envs)]
        game_ids = np.array([run_games.index(g) for g in play])
        ale = [np.asarray(games.minimal_action_set(g)) for g in play]

        reference = None
        ref_info: dict[str, Any] = {}
        if args.reference_code:
            code = Path(args.reference_code)
            with contextlib.redirect_stdout(sys.stderr):  # its prints; stdout is the JSON
                ref = import_reference(code)
                ref_tok, ref_world = reference_models(ref, code, args.size, device)
                loader = ref["agent"].Agent(ref_tok, ref_world, 0, 1, torch.float32, args.buffer_size, device)
                loader.load(str(tok.parent), True, False, tok.name, None)  # its own loader: the tokenizer
            left = load_reference_world(ref_world, wm, device)
            ref_tok.eval(), ref_world.eval()
            dropout_off = q_dropout_off(ref_world, ref)
            if full and not random_files:
                with torch.no_grad():
                    ref_world.head_ends.head_module[-1].bias.copy_(torch.tensor(NEVER_TERMINAL))
            reference = ReferencePlanner(ref, ref_tok, ref_world, play, args.horizon, args.beam, args.buffer_size,
                                         device)
            ref_info = {"code": _code_id(code), "stubbed_modules": ref["stubbed"],
                        "world_keys_left_constructed": sorted({k.split(".", 3)[-1] for k in left}) or None,
                        "q_dropout_modules_switched_off": dropout_off, "buffer_size": args.buffer_size,
                        "flash_attn": bool(ref["models.transformer"].use_flash_attn)}

        env_list = [envs.make_env(g, protocol="eval", seed=i) for i, g in enumerate(play)]
        obs = np.stack([e.reset(seed=i)[0] for i, e in enumerate(env_list)])[:, None]
        policy.reset(np.arange(args.envs))
        rng = np.random.default_rng(0)
        times: list[float] = []
        ref_times: list[float] = []
        same = same_timed = 0
        disagreements: list[dict[str, Any]] = []
        for step in range(args.warmup + args.decisions):
            timed = step >= args.warmup

            before = policy._ctx  # the history, for the untimed check of a disagreement

            def ours(obs: np.ndarray) -> tuple[np.ndarray, float]:
                t = time.perf_counter()
                a = policy.act(obs, game_ids)
                return a, time.perf_counter() - t

            def theirs(obs: np.ndarray) -> tuple[list[int], float]:
                assert reference is not None
                t = time.perf_counter()
                a = [reference.act(i, obs[i, -1]) for i in range(args.envs)]
                return a, time.perf_counter() - t

            if reference is not None and step % 2:  # which planner goes first alternates
                ref_actions, ref_took = theirs(obs)
                actions, took = ours(obs)
            else:
                actions, took = ours(obs)
                ref_actions, ref_took = theirs(obs) if reference is not None else ([], 0.0)
            line = f"act {step}: {took:.2f} s"
            if reference is not None:
                line += f", reference {ref_took:.2f} s"
                ours_ale = [int(ale[i][actions[i]]) for i in range(args.envs)]
                agree = sum(a == b for a, b in zip(ours_ale, ref_actions))
                same += agree
                same_timed += agree if timed else 0
                if agree < args.envs:  # would ours choose theirs with the reference's reward rule? (untimed)
                    check: Any = algo.policy(EvalOptions(planning_horizon=args.horizon, beam_width=args.beam))
                    check._ctx = before  # the same history as the timed call
                    with mock.patch.object(planner_module, "_reward_term", _mode_reward):
                        mode_actions = check.act(obs, game_ids)
                    disagreements += [{"step": step, "env": i, "game": play[i], "ours": ours_ale[i],
                                       "reference": ref_actions[i],
                                       "ours_with_mode_reward": int(ale[i][mode_actions[i]])}
                                      for i in range(args.envs) if ours_ale[i] != ref_actions[i]]
                line += f", same actions {agree}/{args.envs}"
            print(line + ("" if timed else " (warm-up)"), file=sys.stderr, flush=True)
            if timed:
                times.append(took)
                ref_times.append(ref_took)
            # random executed actions keep the episodes moving whatever the random model plans
            executed = np.array([rng.integers(games.num_actions(g)) for g in play])
            frames, rewards = [], []
            for i, e in enumerate(env_list):
                o, r, term, trunc, _ = e.step(int(executed[i]))
                if reference is not None:
                    reference.observe(i, int(ale[i][executed[i]]))
                if term or trunc:
                    o, _ = e.reset(seed=100 + step)
                    policy.reset([i])  # after observe: the next act starts the new episode's context
                    if reference is not None:
                        reference.reset(i)
                frames.append(o)
                rewards.append(float(r))
            policy.observe(executed, np.array(rewards))
            obs = np.stack(frames)[:, None]
        assert actions.shape == (args.envs,)
        for e in env_list:
            e.close()
    total = sum(times)
    n_timed = args.decisions * args.envs
    result: dict[str, Any] = {
        "model": f"JOWA-{args.size.upper()} converted ({model_name})", "weights": "random (released layout)"
        if random_files else "released files", "full_search": full, "device": args.device,
        "horizon": args.horizon, "beam_width": args.beam, "envs": args.envs, "games": play,
        "context_steps": policy.context_steps, "timed_decisions": n_timed,
        "decisions_per_s": round(n_timed / total, 3),
        "seconds_per_batched_act": round(total / args.decisions, 3),
        "median_decisions_per_s": round(args.envs / statistics.median(times), 3),
        "seconds_per_batched_act_each": [round(x, 3) for x in times],
        "convert_s": round(convert_s, 1), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(), "torch": torch.__version__,
    }
    if reference is not None:
        ref_total = sum(ref_times)
        all_decisions = (args.warmup + args.decisions) * args.envs
        result["reference"] = {
            **ref_info, "planner": "src/agent.py Agent.plan_beam_search, one environment per call",
            "decisions_per_s": round(n_timed / ref_total, 3),
            "median_decisions_per_s": round(args.envs / statistics.median(ref_times), 3),
            "seconds_per_step_all_envs_each": [round(x, 3) for x in ref_times],
            "same_actions_timed": f"{same_timed}/{n_timed}", "same_actions_all": f"{same}/{all_decisions}",
            "disagreements_explained_by_reward_rule":
                f"{sum(d['ours_with_mode_reward'] == d['reference'] for d in disagreements)}/{len(disagreements)}",
            "disagreements": disagreements[:20],
        }
        result["ours_over_reference"] = round(ref_total / total, 2)
        # per-step medians: robust to a neighbour's burst that lands on a few steps of the run
        result["ours_over_reference_medians"] = round(statistics.median(ref_times) / statistics.median(times), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

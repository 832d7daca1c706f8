"""Convert foreign checkpoints into ordinary workbench run folders.

``python -m workbench.convert jowa --tokenizer tokenizer.pt --world-model JOWA_40M.pt
[--size 40m|70m|150m] [--games jowa_15] --output-dir runs/jowa-40m-released``

JOWA's authors release (github.com/CJReinforce/JOWA, ``checkpoints/JOWA/``) a tokenizer
(``tokenizer.pt``) and three world-action models (``JOWA_40M.pt``, ``JOWA_70M.pt``,
``JOWA_150M.pt``; named ``world_model_*M.pt`` in the repository's first commit, same content).
Each is a PyTorch ``state_dict`` (saved through DistributedDataParallel, so its keys may carry
``module.``, and under torch.compile ``_orig_mod.``; the reference loader strips either, and so
does this one). They are read with ``torch.load(weights_only=True)``: nothing is unpickled.

The result is a ``pretrain`` run of algorithm ``jowa`` with the model preset
``jowa-<size>-ref`` (the reference tokenizer, ``workbench.models.ref_tokenizer``), whose
``config.json`` records, under ``resolved.converted_from``, each source file's name, size and
sha256, the key prefix found, the source row of every game's task embedding, and every source
key that was dropped with the reason. ``workbench.run.load_algo(<output>)`` then rebuilds the
algorithm and its planner policy like any trained run's.

Every key of both source files is accounted for: mapped (the table below) or dropped with its
reason (:data:`DROPPED`). A missing or unexpected key, a shape that is not the size's, a
non-floating weight or a NaN/Inf value stops the conversion, naming the file and the key(s),
before the output folder is created.

World-action model (reference ``src/models/jowa_model.py``, ``transformer.py``, ``slicer.py``)::

    pos_emb.weight                              -> world.gpt.pos_emb.weight
    embedder.embedding_tables.0.weight (18, D)  -> world.act_emb.weight  (rows = ALE action ids)
    embedder.embedding_tables.1.weight          -> world.obs_emb.weight
    task_emb.embedding_tables.0.weight (60, D)  -> world.task_act_emb.weight  (rows of the run's games)
    task_emb.embedding_tables.1.weight (60, D)  -> world.task_obs_emb.weight  (rows of the run's games)
    transformer.blocks.i.ln1 / ln2              -> world.gpt.blocks.i.ln_1 / ln_2
    transformer.blocks.i.attn.query|key|value   -> world.gpt.blocks.i.attn.qkv  (concatenated q, k, v)
    transformer.blocks.i.attn.proj              -> world.gpt.blocks.i.attn.proj
    transformer.blocks.i.mlp.0 / mlp.2          -> world.gpt.blocks.i.mlp.0 / mlp.2
    transformer.ln_f                            -> world.gpt.ln_f
    head_observations|rewards|ends.head_module  -> world.obs_head | reward_head | term_head
    head_q.head_module.params.j (num_q, ...)    -> world.q_head.heads.h.<layer>  (member h of the ensemble)
    head_q_target.head_module.params.j          -> world.target_q_head.module.heads.h.<layer>

The Q ensemble (TD-MPC2 style, vectorised with ``functorch.combine_state_for_ensemble``) stores
each parameter of its MLP stacked over members, in the MLP's parameter order: Linear weight,
bias, LayerNorm weight, bias (twice), then the output Linear's weight and bias.

Task embeddings: row ``i`` of both tables belongs to game ``REFERENCE_GAMES[i]`` (the reference's
``src/action_tokenizer.py`` GAME_NAMES: the 60 DQN-Replay games in alphabetical order). The run
keeps the rows of its games, in its order (default: the 15 pretraining games, ``jowa_15``);
the other rows are dropped. Actions: the reference embeds and scores the 18 actions of ALE's full
set by ALE id (its ``_FULL_ACTION_SET`` is ALE's action order), as the workbench's JOWA does, and
its per-game valid actions (``_LIMITED_ACTION_SET``, which masks the Q head) are the workbench's
minimal sets: the same sets for all 60 games, compared when this converter was written.

Known behaviour differences (the weights are the same, what runs around them is not): the
reference's Q ensemble keeps its 0.01 dropout active at evaluation (its ``functorch`` copy of the
MLP is never put in eval mode), the workbench evaluates it without dropout; the reference plans
with its own beam search and context buffer, the workbench with ``workbench.planner``.

Tokenizer (reference ``src/models/tokenizer/``)::

    encoder.* / decoder.*                      -> tokenizer.encoder.* / tokenizer.decoder.*  (same names)
    pre_quant_conv / embedding / post_quant_conv -> tokenizer.pre_quant / codebook / post_quant
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.algos.jowa import JOWA, JOWAConfig
from workbench.checkpoint import save_checkpoint
from workbench.config import PretrainConfig
from workbench.fileio import sha256_file
from workbench.games import resolve_games
from workbench.models.ref_tokenizer import RefTokenizer, RefTokenizerConfig
from workbench.models.world_action import PRESETS
from workbench.run import Run, RunLock

__all__ = [
    "DROPPED", "RELEASED", "REFERENCE_GAMES", "SIZES", "ConversionError", "RefSize", "convert_jowa",
    "main", "map_tokenizer", "map_world_model", "read_state_dict", "tokenizer_spec", "world_model_spec",
]

REFERENCE_REPO = "https://github.com/CJReinforce/JOWA"

#: Task-embedding row order of the reference (src/action_tokenizer.py GAME_NAMES).
REFERENCE_GAMES: tuple[str, ...] = (
    "AirRaid", "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist", "BattleZone",
    "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Carnival", "Centipede", "ChopperCommand",
    "CrazyClimber", "DemonAttack", "DoubleDunk", "ElevatorAction", "Enduro", "FishingDerby", "Freeway",
    "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey", "Jamesbond", "JourneyEscape", "Kangaroo", "Krull",
    "KungFuMaster", "MontezumaRevenge", "MsPacman", "NameThisGame", "Phoenix", "Pitfall", "Pong", "Pooyan",
    "PrivateEye", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "Skiing", "Solaris",
    "SpaceInvaders", "StarGunner", "Tennis", "TimePilot", "Tutankham", "UpNDown", "Venture", "VideoPinball",
    "WizardOfWor", "YarsRevenge", "Zaxxon",
)  # fmt: skip

#: The games the released models were pretrained on (paper Table 2; the eval/*_raw_scores.json
#: files of the reference hold exactly these): the other task rows never saw data.
PRETRAINED_GAMES: tuple[str, ...] = resolve_games("jowa_15")

TOKENS_PER_BLOCK = 37  # 36 observation tokens + 1 action token (config/transformer/*.yaml)
MAX_BLOCKS = 8
OBS_VOCAB = 2048
ACT_VOCAB = 18
NUM_ATOMS = 51


@dataclass(frozen=True)
class RefSize:
    """One released size: ``config/transformer/JOWA_<size>.yaml`` and ``config/critic_head/``."""

    name: str
    layers: int
    heads: int
    embed: int
    q_hidden: int
    num_q: int
    release: str
    """The released file's name."""

    @property
    def preset(self) -> str:
        return f"jowa-{self.name}-ref"


SIZES: dict[str, RefSize] = {
    "40m": RefSize("40m", layers=4, heads=8, embed=512, q_hidden=768, num_q=1, release="JOWA_40M.pt"),
    "70m": RefSize("70m", layers=6, heads=12, embed=768, q_hidden=1024, num_q=1, release="JOWA_70M.pt"),
    "150m": RefSize("150m", layers=12, heads=12, embed=768, q_hidden=1792, num_q=3, release="JOWA_150M.pt"),
}

#: sha256 and byte size of the released files (their Git LFS pointers in the reference
#: repository, commit 8cb02c5): a converted run says whether its input is one of them.
RELEASED: dict[str, tuple[str, int]] = {
    "tokenizer.pt": ("4f624acf7ae82cfdeb6bc3b11651d073bc168fa5300f70a3b8ba029b07c68a4a", 75_162_490),
    "JOWA_40M.pt": ("c1c3d8242141725a2a4bfa61e899e18ff8153a2600a2803d7aa98405366fd771", 76_485_274),
    "JOWA_70M.pt": ("82b221e802219324e798afa086affe41a0697327601454c0abfd72720ba6e397", 213_458_522),
    "JOWA_150M.pt": ("3f60776688ead94a684b359f23709327600af5b20a109b48e649cedaee37c5b1", 511_212_618),
}

#: Key prefixes of a state_dict saved through DDP and/or torch.compile (the reference's loader
#: accepts the same), longest first.
PREFIXES = ("_orig_mod.module.", "module.", "_orig_mod.", "")

#: Why each kind of source key is not carried over (the keys themselves are listed per run).
DROPPED: dict[str, str] = {
    "lpips": "the LPIPS perceptual-loss network (frozen VGG16 features, five 1x1 linear layers and the input "
             "scaling) of the reference tokenizer's training loss: not used to encode or decode; the workbench "
             "keeps perceptual weights out of checkpoints (TokenizerConfig.perceptual_weights)",
    "indices": "a Head's slicing index buffer (which positions of the 37-token step the head reads): a constant of "
               "the sequence layout, checked to be the layout the workbench model uses, not a weight",
    "task_rows": "task-embedding rows of the games the run does not carry (only the run's games get a row)",
}


class ConversionError(ValueError):
    """A source file that is not what the converter maps: the message names the file and keys."""


Spec = dict[str, tuple[tuple[int, ...], bool]]
"""key -> (shape, floating); a non-floating entry must be int64."""


# ------------------------------------------------------------------------------ source layouts


def world_model_spec(size: RefSize) -> Spec:
    """Every key (prefix stripped) and shape of a released world-action model of ``size``."""
    D, Q = size.embed, size.num_q
    spec: Spec = {
        "pos_emb.weight": ((TOKENS_PER_BLOCK * MAX_BLOCKS, D), True),
        "task_emb.embedding_tables.0.weight": ((len(REFERENCE_GAMES), D), True),
        "task_emb.embedding_tables.1.weight": ((len(REFERENCE_GAMES), D), True),
        "embedder.embedding_tables.0.weight": ((ACT_VOCAB, D), True),
        "embedder.embedding_tables.1.weight": ((OBS_VOCAB, D), True),
        "transformer.ln_f.weight": ((D,), True),
        "transformer.ln_f.bias": ((D,), True),
    }
    for i in range(size.layers):
        p = f"transformer.blocks.{i}."
        for name in ("ln1", "ln2"):
            spec[f"{p}{name}.weight"] = ((D,), True)
            spec[f"{p}{name}.bias"] = ((D,), True)
        for name in ("key", "query", "value", "proj"):
            spec[f"{p}attn.{name}.weight"] = ((D, D), True)
            spec[f"{p}attn.{name}.bias"] = ((D,), True)
        spec[f"{p}mlp.0.weight"] = ((4 * D, D), True)
        spec[f"{p}mlp.0.bias"] = ((4 * D,), True)
        spec[f"{p}mlp.2.weight"] = ((D, 4 * D), True)
        spec[f"{p}mlp.2.bias"] = ((D,), True)
    for head, out in (("head_observations", OBS_VOCAB), ("head_rewards", 3), ("head_ends", 2)):
        spec[f"{head}.indices"] = ((len(_head_indices(head)),), False)
        spec[f"{head}.head_module.0.weight"] = ((D, D), True)
        spec[f"{head}.head_module.0.bias"] = ((D,), True)
        spec[f"{head}.head_module.2.weight"] = ((out, D), True)
        spec[f"{head}.head_module.2.bias"] = ((out,), True)
    for head in ("head_q", "head_q_target"):
        spec[f"{head}.indices"] = ((MAX_BLOCKS,), False)
        for j, shape in enumerate(_q_param_shapes(size)):
            spec[f"{head}.head_module.params.{j}"] = ((Q, *shape), True)
    return spec


def _q_param_shapes(size: RefSize) -> list[tuple[int, ...]]:
    """Per-member shapes of the Q MLP's parameters, in its parameter order."""
    D, H, A = size.embed, size.q_hidden, ACT_VOCAB * NUM_ATOMS
    return [(H, D), (H,), (H,), (H,), (H, H), (H,), (H,), (H,), (A, H), (A,)]


def _head_indices(head: str) -> list[int]:
    """The positions (over the 8 x 37 context) a reference Head reads: observation logits at every
    position but the last observation token, reward and end at the action token, Q at the last
    observation token (its ``block_mask`` repeated over the blocks)."""
    obs = list(range(TOKENS_PER_BLOCK - 2)) + [TOKENS_PER_BLOCK - 1]
    kept = {"head_observations": obs, "head_rewards": [TOKENS_PER_BLOCK - 1], "head_ends": [TOKENS_PER_BLOCK - 1],
            "head_q": [TOKENS_PER_BLOCK - 2], "head_q_target": [TOKENS_PER_BLOCK - 2]}[head]
    return [b * TOKENS_PER_BLOCK + k for b in range(MAX_BLOCKS) for k in kept]


_TOKENIZER_RENAMES = {"pre_quant_conv.": "pre_quant.", "embedding.": "codebook.", "post_quant_conv.": "post_quant."}

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # torchvision feature indices of slice1..5


def _lpips_spec() -> Spec:
    spec: Spec = {"lpips.scaling_layer.shift": ((1, 3, 1, 1), True), "lpips.scaling_layer.scale": ((1, 3, 1, 1), True)}
    idx, c_in = 0, 3
    for v in _VGG16:
        if v == "M":
            idx += 1
            continue
        s = next(n for n, (lo, hi) in enumerate(_VGG_SLICES, 1) if lo <= idx < hi)
        spec[f"lpips.net.slice{s}.{idx}.weight"] = ((int(v), c_in, 3, 3), True)
        spec[f"lpips.net.slice{s}.{idx}.bias"] = ((int(v),), True)
        c_in, idx = int(v), idx + 2  # conv + ReLU
    for i, c in enumerate((64, 128, 256, 512, 512)):
        spec[f"lpips.lin{i}.model.1.weight"] = ((1, c, 1, 1), True)  # model.0 is a Dropout
    return spec


def _tokenizer_source_name(target: str) -> str:
    for src, dst in _TOKENIZER_RENAMES.items():
        if target.startswith(dst):
            return src + target[len(dst):]
    return target


def tokenizer_spec() -> Spec:
    """Every key (prefix stripped) and shape of the released ``tokenizer.pt``."""
    model = RefTokenizer(RefTokenizerConfig()).state_dict()
    spec: Spec = {_tokenizer_source_name(k): (tuple(v.shape), True) for k, v in model.items()}
    spec.update(_lpips_spec())
    return spec


# ------------------------------------------------------------------------------ reading and checking


def read_state_dict(path: str | os.PathLike[str], what: str) -> tuple[dict[str, torch.Tensor], str]:
    """A flat state_dict from ``path`` (``torch.load(weights_only=True)``) with its key prefix
    (one of :data:`PREFIXES`, shared by every key) stripped; returns (state, prefix)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{what} file {path} does not exist")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # any unreadable or unsafe file: say which and why
        raise ConversionError(f"{path} is not a state_dict torch.load(weights_only=True) can read ({exc})") from None
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a non-empty state_dict (a mapping of names "
                              "to tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not named tensors: {bad[:8]}")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            return {k[len(prefix):]: v for k, v in obj.items()}, prefix
    raise AssertionError("unreachable: the empty prefix matches every key")


def check_state(state: Mapping[str, torch.Tensor], spec: Spec, path: Path, what: str) -> None:
    """Refuse ``state`` unless its keys are exactly ``spec``'s, each with its shape, a floating
    dtype for weights (int64 for index buffers), and only finite values."""
    problems = []
    missing = sorted(set(spec) - set(state))
    extra = sorted(set(state) - set(spec))
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if extra:
        problems.append(f"unexpected keys {_few(extra)}")
    wrong = []
    for key in sorted(set(spec) & set(state)):
        shape, floating = spec[key]
        t = state[key]
        if tuple(t.shape) != shape:
            wrong.append(f"{key} is {tuple(t.shape)}, expected {shape}")
        elif floating != t.is_floating_point() or (not floating and t.dtype != torch.int64):
            wrong.append(f"{key} is {t.dtype}, expected {'a floating dtype' if floating else 'torch.int64'}")
    if wrong:
        problems.append(f"wrong shapes or dtypes: {_few(wrong)}")
    bad = [k for k in sorted(state) if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if bad:
        problems.append(f"NaN or Inf values in {_few(bad)}")
    if problems:
        raise ConversionError(f"{path} is not the reference's {what}: " + "; ".join(problems))


def _few(items: Sequence[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def infer_size(state: Mapping[str, torch.Tensor], path: Path) -> RefSize:
    """The released size whose layer count, width and Q ensemble ``state`` has."""
    layers = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("transformer.blocks.")), default=-1)
    pos = state.get("pos_emb.weight")
    q = state.get("head_q.head_module.params.0")
    width = int(pos.shape[-1]) if pos is not None else -1
    num_q = int(q.shape[0]) if q is not None and q.dim() == 3 else -1
    for size in SIZES.values():
        if (size.layers, size.embed, size.num_q) == (layers, width, num_q):
            return size
    raise ConversionError(
        f"{path} matches no released size: it has {layers} transformer blocks, width {width} and {num_q} Q heads; "
        + "; ".join(f"{s.name}: {s.layers} blocks, width {s.embed}, {s.num_q} Q heads" for s in SIZES.values())
    )


# ------------------------------------------------------------------------------ mapping


@dataclass
class Mapped:
    """The workbench tensors and, per source key, where it went (or why it was dropped)."""

    state: dict[str, torch.Tensor]
    mapped: dict[str, list[str]]
    dropped: dict[str, list[str]]  # reason key of DROPPED -> source keys


def map_world_model(src: Mapping[str, torch.Tensor], size: RefSize, games: Sequence[str]) -> Mapped:
    """The JOWA model's ``world.*`` tensors from a checked reference world-action model."""
    out: dict[str, torch.Tensor] = {}
    mapped: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}

    def put(target: str, value: torch.Tensor, *sources: str) -> None:
        out[target] = value.detach().to(torch.float32).contiguous().clone()
        for s in sources:
            mapped.setdefault(s, []).append(target)

    def same(source: str, target: str) -> None:
        put(target, src[source], source)

    same("pos_emb.weight", "world.gpt.pos_emb.weight")
    same("embedder.embedding_tables.0.weight", "world.act_emb.weight")
    same("embedder.embedding_tables.1.weight", "world.obs_emb.weight")
    rows = [REFERENCE_GAMES.index(g) for g in games]
    for table, target in (("0", "world.task_act_emb.weight"), ("1", "world.task_obs_emb.weight")):
        key = f"task_emb.embedding_tables.{table}.weight"
        put(target, src[key][rows], key)
    if len(set(rows)) < len(REFERENCE_GAMES):
        dropped.setdefault("task_rows", []).extend(
            f"task_emb.embedding_tables.{t}.weight[{r}] ({REFERENCE_GAMES[r]})"
            for t in ("0", "1") for r in range(len(REFERENCE_GAMES)) if r not in rows)
    for i in range(size.layers):
        s, t = f"transformer.blocks.{i}.", f"world.gpt.blocks.{i}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2"), ("attn.proj", "attn.proj"), ("mlp.0", "mlp.0"),
                     ("mlp.2", "mlp.2")):
            for p in ("weight", "bias"):
                same(f"{s}{a}.{p}", f"{t}{b}.{p}")
        for p in ("weight", "bias"):  # the workbench's one qkv projection: q, k, v stacked in that order
            qkv = [f"{s}attn.{n}.{p}" for n in ("query", "key", "value")]
            put(f"{t}attn.qkv.{p}", torch.cat([src[k] for k in qkv], dim=0), *qkv)
    for p in ("weight", "bias"):
        same(f"transformer.ln_f.{p}", f"world.gpt.ln_f.{p}")
    for head, target in (("head_observations", "obs_head"), ("head_rewards", "reward_head"),
                         ("head_ends", "term_head")):
        for layer in ("0", "2"):
            for p in ("weight", "bias"):
                same(f"{head}.head_module.{layer}.{p}", f"world.{target}.{layer}.{p}")
    layers = _q_member_names()
    for head, target in (("head_q", "world.q_head"), ("head_q_target", "world.target_q_head.module")):
        for j, name in enumerate(layers):
            key = f"{head}.head_module.params.{j}"
            for h in range(size.num_q):
                put(f"{target}.heads.{h}.{name}", src[key][h], key)
    for head in ("head_observations", "head_rewards", "head_ends", "head_q", "head_q_target"):
        key = f"{head}.indices"
        if src[key].tolist() != _head_indices(head):
            raise ConversionError(f"{key} reads positions {src[key].tolist()[:12]}..., not the layout "
                                  f"{_head_indices(head)[:12]}... of the released models (another sequence layout?)")
        dropped.setdefault("indices", []).append(key)
    return Mapped(out, mapped, dropped)


def _q_member_names() -> list[str]:
    """Parameter names of one workbench Q-head member, in the reference MLP's parameter order
    (Linear, LayerNorm, Linear, LayerNorm, Linear: weight then bias each): the Sequential's own
    order, Dropout and Mish having none."""
    return ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "5.weight", "5.bias", "7.weight",
            "7.bias"]


def map_tokenizer(src: Mapping[str, torch.Tensor]) -> Mapped:
    """The JOWA model's ``tokenizer.*`` tensors from a checked reference tokenizer."""
    out: dict[str, torch.Tensor] = {}
    mapped: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    for key, value in src.items():
        if key.startswith("lpips."):
            dropped.setdefault("lpips", []).append(key)
            continue
        target = key
        for s, d in _TOKENIZER_RENAMES.items():
            if key.startswith(s):
                target = d + key[len(s):]
        out["tokenizer." + target] = value.detach().to(torch.float32).contiguous().clone()
        mapped[key] = ["tokenizer." + target]
    return Mapped(out, mapped, dropped)


# ------------------------------------------------------------------------------ the job


def _file_info(path: Path, prefix: str, dtypes: set[str]) -> dict[str, Any]:
    digest = sha256_file(path)
    release = next((name for name, (sha, _) in RELEASED.items() if sha == digest), None)
    return {"name": path.name, "path": str(path), "bytes": path.stat().st_size, "sha256": digest,
            "released_as": release, "key_prefix": prefix, "dtypes": sorted(dtypes)}


def _refuse_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output_dir {out} exists and is not an empty folder; give a new folder for the "
                              "converted run")


def convert_jowa(
    tokenizer: str | os.PathLike[str], world_model: str | os.PathLike[str], output_dir: str | os.PathLike[str],
    *, size: str | None = None, games: str | Sequence[str] = "jowa_15",
) -> Path:
    """Convert the reference's ``tokenizer`` and ``world_model`` files into a new run folder
    ``output_dir`` (see the module docstring); returns the checkpoint folder."""
    out = Path(output_dir).expanduser().resolve()
    _refuse_output(out)
    game_list = resolve_games(games)
    unknown = [g for g in game_list if g not in REFERENCE_GAMES]
    if unknown:
        raise ConversionError(f"games {unknown} have no task embedding in the reference (its games: "
                              f"{', '.join(REFERENCE_GAMES)})")
    if size is not None and size.lower() not in SIZES:
        raise ConversionError(f"unknown size {size!r}; released sizes: {', '.join(SIZES)}")

    tok_path, wm_path = Path(tokenizer).resolve(), Path(world_model).resolve()
    tok_src, tok_prefix = read_state_dict(tok_path, "tokenizer")
    wm_src, wm_prefix = read_state_dict(wm_path, "world-model")
    found = infer_size(wm_src, wm_path)
    if size is not None and SIZES[size.lower()] != found:
        raise ConversionError(f"--size {size} was given but {wm_path} is the {found.name} model "
                              f"({found.layers} blocks, width {found.embed}, {found.num_q} Q heads)")
    check_state(tok_src, tokenizer_spec(), tok_path, "tokenizer")
    check_state(wm_src, world_model_spec(found), wm_path, f"JOWA-{found.name.upper()} world-action model")

    tok = map_tokenizer(tok_src)
    world = map_world_model(wm_src, found, game_list)
    accounted = {"tokenizer": (tok, tok_src), "world_model": (world, wm_src)}
    for what, (m, source) in accounted.items():
        dropped = {k.split("[")[0] for keys in m.dropped.values() for k in keys}
        left = sorted(set(source) - set(m.mapped) - dropped)
        if left:  # a key neither mapped nor dropped would be lost silently: a converter bug
            raise AssertionError(f"{what} keys neither mapped nor dropped: {left}")

    cfg = PRESETS[found.preset]
    if (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.q_hidden, cfg.q_heads) != (
            found.layers, found.heads, found.embed, found.q_hidden, found.num_q):
        raise AssertionError(f"preset {found.preset} does not have the reference {found.name} model's dimensions")
    algo = JOWA.build(found.preset, game_list, JOWAConfig())
    state = {**tok.state, **world.state}
    expected = algo.model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise AssertionError(f"mapping does not fill the {found.preset} model: missing {missing[:8]}, extra "
                             f"{extra[:8]}, shapes {shapes[:8]}")
    algo.model.load_state_dict(state, strict=True)

    provenance: dict[str, Any] = {
        "converter": "python -m workbench.convert jowa",
        "reference": REFERENCE_REPO,
        "size": found.name,
        "files": {
            "tokenizer": _file_info(tok_path, tok_prefix, {str(v.dtype) for v in tok_src.values()}),
            "world_model": _file_info(wm_path, wm_prefix, {str(v.dtype) for v in wm_src.values()}),
        },
        "task_rows": {g: REFERENCE_GAMES.index(g) for g in game_list},
        "untrained_task_rows": [g for g in game_list if g not in PRETRAINED_GAMES],
        "mapped_keys": {"tokenizer": len(tok.mapped), "world_model": len(world.mapped)},
        "dropped": {reason: DROPPED[reason] for reason in sorted({*tok.dropped, *world.dropped})},
        "dropped_keys": {**{f"tokenizer.{r}": k for r, k in tok.dropped.items()},
                         **{f"world_model.{r}": k for r, k in world.dropped.items()}},
    }
    config = PretrainConfig(model=found.preset, algo="jowa", games=",".join(game_list), preset="paper",
                            output_dir=str(out))
    resolved = {**config.resolve(), "converted_from": provenance}
    params = {"converter": "jowa", "tokenizer": str(tok_path), "world_model": str(wm_path), "size": found.name,
              "games": list(game_list), "output_dir": str(out)}

    existed = out.exists()
    try:
        with RunLock(out):
            Run(out).create("pretrain", params, resolved)
            ckpt = save_checkpoint(out, 0, algo.model, extra={"converted_from": {
                "reference": REFERENCE_REPO, "size": found.name,
                "sha256": {k: v["sha256"] for k, v in provenance["files"].items()}}})
    except BaseException:
        # a half-written run folder is worse than none: remove what this call created
        if existed:
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ckpt


# ------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="format", required=True)
    jowa = sub.add_parser("jowa", help="JOWA's released tokenizer.pt + JOWA_<size>.pt -> a jowa run folder")
    jowa.add_argument("--tokenizer", required=True, help="the reference's tokenizer.pt")
    jowa.add_argument("--world-model", required=True, help="JOWA_40M.pt, JOWA_70M.pt or JOWA_150M.pt")
    jowa.add_argument("--size", choices=sorted(SIZES), default=None,
                      help="the world model's size (default: read from its shapes; given, it must agree)")
    jowa.add_argument("--games", default="jowa_15",
                      help="games of the run, in order: a game set or comma-separated names (default: jowa_15, "
                           "the 15 pretraining games); each takes its own task-embedding row")
    jowa.add_argument("--output-dir", required=True, help="a new (or empty) folder for the run")
    args = parser.parse_args(argv)
    try:
        ckpt = convert_jowa(args.tokenizer, args.world_model, args.output_dir, size=args.size, games=args.games)
    except (ConversionError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = Run.open(ckpt)
    info = run.resolved["converted_from"]
    dropped = sum(len(v) for v in info["dropped_keys"].values())
    print(f"converted JOWA-{info['size'].upper()} ({run.model}, {len(run.games)} games) into {run.path}")
    print(f"  checkpoint {ckpt}")
    print(f"  mapped {sum(info['mapped_keys'].values())} source keys; dropped {dropped} (reasons in config.json)")
    for what, f in info["files"].items():
        print(f"  {what}: {f['name']} sha256 {f['sha256'][:16]}... ({f['released_as'] or 'not a released file'})")
    if info["untrained_task_rows"]:
        print(f"  note: {', '.join(info['untrained_task_rows'])} were not among the release's pretraining games; "
              "their task-embedding rows never saw data")
    return 0


if __name__ == "__main__":
    sys.exit(main())

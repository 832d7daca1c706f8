"""Converting JOWA's released checkpoints (``python -m workbench.convert jowa``), without them.

The fixture generator below writes state dicts with the released files' key names, dtypes and
shapes (written here from the reference modules' structure, independently of
``workbench.convert``'s own table; the two are compared, and the layouts' sizes against the
released files' byte sizes) and random values, with ``torch.save``, so every test runs offline.
Tensors the converter drops (LPIPS) and the files of the refusal tests hold stride-0 tensors
(one stored value, the right shape and dtype), which keeps the files small.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.algos.base import EvalOptions
from workbench.algos.jowa import JOWA
from workbench.convert import (
    RELEASED,
    SIZES,
    ConversionError,
    RefSize,
    convert_jowa,
    main,
    map_world_model,
    read_state_dict,
    tokenizer_spec,
    world_model_spec,
)
from workbench.games import DQN_REPLAY_GAMES, GAME_SETS, minimal_action_set
from workbench.models.ref_tokenizer import RefTokenizer, RefTokenizerConfig
from workbench.models.tokenizer import TOKENS_PER_FRAME
from workbench.models.world_action import PRESETS, WorldActionModel, world_action_config
from workbench.run import load_algo

D_CH = 64  # tokenizer channels (config/tokenizer/default.yaml)


# ------------------------------------------------------------------------------ reference layouts


def ref_tokenizer_layout(lpips: bool = True) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Keys of the reference Tokenizer's state_dict (src/models/tokenizer/*.py with
    config/tokenizer/default.yaml): ch 64, ch_mult [1, 1, 1], 2 res blocks, attention at 6 and 12,
    z 512, codebook 2048 x 512; LPIPS (VGG16) included, as torch.save(tokenizer.state_dict())."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    f32 = torch.float32

    def conv(name: str, c_in: int, c_out: int, k: int, bias: bool = True) -> None:
        out[f"{name}.weight"] = ((c_out, c_in, k, k), f32)
        if bias:
            out[f"{name}.bias"] = ((c_out,), f32)

    def norm(name: str, c: int) -> None:
        out[f"{name}.weight"] = ((c,), f32)
        out[f"{name}.bias"] = ((c,), f32)

    def resnet(name: str) -> None:  # temb_channels = 0: no temb_proj; in == out: no shortcut
        norm(f"{name}.norm1", D_CH)
        conv(f"{name}.conv1", D_CH, D_CH, 3)
        norm(f"{name}.norm2", D_CH)
        conv(f"{name}.conv2", D_CH, D_CH, 3)

    def attn(name: str) -> None:
        norm(f"{name}.norm", D_CH)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", D_CH, D_CH, 1)

    conv("encoder.conv_in", 1, D_CH, 3)
    for level, res in enumerate((84, 12, 6)):
        for b in range(2):
            resnet(f"encoder.down.{level}.block.{b}")
            if res in (6, 12):
                attn(f"encoder.down.{level}.attn.{b}")
    conv("encoder.down.0.downsample.conv", D_CH, D_CH, 8)  # scale 7: kernel 8
    conv("encoder.down.1.downsample.conv", D_CH, D_CH, 3)  # scale 2: kernel 3
    resnet("encoder.mid.block_1")
    attn("encoder.mid.attn_1")
    resnet("encoder.mid.block_2")
    norm("encoder.norm_out", D_CH)
    conv("encoder.conv_out", D_CH, 512, 3)
    conv("pre_quant_conv", 512, 512, 1)
    out["embedding.weight"] = ((2048, 512), f32)
    conv("post_quant_conv", 512, 512, 1)
    conv("decoder.conv_in", 512, D_CH, 3)
    resnet("decoder.mid.block_1")
    attn("decoder.mid.attn_1")
    resnet("decoder.mid.block_2")
    for level in range(3):  # decoder resolutions counted from 4: no level attention
        for b in range(3):
            resnet(f"decoder.up.{level}.block.{b}")
    conv("decoder.up.1.upsample.conv", D_CH, D_CH, 3)
    conv("decoder.up.2.upsample.conv", D_CH, D_CH, 3)
    norm("decoder.norm_out", D_CH)
    conv("decoder.conv_out", D_CH, 1, 3)
    if lpips:
        out["lpips.scaling_layer.shift"] = ((1, 3, 1, 1), f32)
        out["lpips.scaling_layer.scale"] = ((1, 3, 1, 1), f32)
        vgg = {1: [(0, 3, 64), (2, 64, 64)], 2: [(5, 64, 128), (7, 128, 128)],
               3: [(10, 128, 256), (12, 256, 256), (14, 256, 256)],
               4: [(17, 256, 512), (19, 512, 512), (21, 512, 512)], 5: [(24, 512, 512), (26, 512, 512), (28, 512, 512)]}
        for s, convs in vgg.items():
            for idx, c_in, c_out in convs:
                conv(f"lpips.net.slice{s}.{idx}", c_in, c_out, 3)
        for i, c in enumerate((64, 128, 256, 512, 512)):
            out[f"lpips.lin{i}.model.1.weight"] = ((1, c, 1, 1), f32)
    return out


Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def ref_world_layout(layers: int, width: int, q_hidden: int, num_q: int) -> Layout:
    """Keys of the reference JOWAModel's state_dict (src/models/jowa_model.py, transformer.py with
    flash-attention, hence no 'mask' buffers; slicer.py's Head 'indices' buffers)."""
    f32, D = torch.float32, width
    out: Layout = {}
    out["pos_emb.weight"] = ((296, D), f32)
    for table, rows in (("task_emb", (60, 60)), ("embedder", (18, 2048))):
        for i, n in enumerate(rows):
            out[f"{table}.embedding_tables.{i}.weight"] = ((n, D), f32)
    for b in range(layers):
        p = f"transformer.blocks.{b}"
        for ln in ("ln1", "ln2"):
            out[f"{p}.{ln}.weight"] = ((D,), f32)
            out[f"{p}.{ln}.bias"] = ((D,), f32)
        for lin in ("key", "query", "value", "proj"):
            out[f"{p}.attn.{lin}.weight"] = ((D, D), f32)
            out[f"{p}.attn.{lin}.bias"] = ((D,), f32)
        out[f"{p}.mlp.0.weight"] = ((4 * D, D), f32)
        out[f"{p}.mlp.0.bias"] = ((4 * D,), f32)
        out[f"{p}.mlp.2.weight"] = ((D, 4 * D), f32)
        out[f"{p}.mlp.2.bias"] = ((D,), f32)
    out["transformer.ln_f.weight"] = ((D,), f32)
    out["transformer.ln_f.bias"] = ((D,), f32)
    for head, n_out, kept in (("head_observations", 2048, 36), ("head_rewards", 3, 1), ("head_ends", 2, 1)):
        out[f"{head}.indices"] = ((8 * kept,), torch.int64)
        out[f"{head}.head_module.0.weight"] = ((D, D), f32)
        out[f"{head}.head_module.0.bias"] = ((D,), f32)
        out[f"{head}.head_module.2.weight"] = ((n_out, D), f32)
        out[f"{head}.head_module.2.bias"] = ((n_out,), f32)
    H, A = q_hidden, 18 * 51
    member = [(H, D), (H,), (H,), (H,), (H, H), (H,), (H,), (H,), (A, H), (A,)]
    for head in ("head_q", "head_q_target"):
        out[f"{head}.indices"] = ((8,), torch.int64)
        for j, shape in enumerate(member):
            out[f"{head}.head_module.params.{j}"] = ((num_q, *shape), f32)
    return out


SIZE_DIMS = {"40m": (4, 512, 768, 1), "70m": (6, 768, 1024, 1), "150m": (12, 768, 1792, 3)}


def head_indices(head: str) -> torch.Tensor:
    """What slicer.Slicer registers: the block mask's kept positions, repeated over 8 blocks."""
    mask = torch.zeros(37, dtype=torch.bool)
    if head == "head_observations":
        mask[:] = True
        mask[-2] = False
    elif head in ("head_rewards", "head_ends"):
        mask[-1] = True
    else:
        mask[-2] = True
    kept = torch.where(mask)[0]
    return kept.repeat(8) + 37 * torch.arange(8).repeat_interleave(len(kept))


def materialize(layout, seed: int = 0, cheap: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Random values (N(0, 0.5)) for a layout; keys starting with one of ``cheap`` get a stride-0
    tensor (a single stored value), index buffers their reference values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in layout.items():
        if key.endswith(".indices"):
            out[key] = head_indices(key.rsplit(".", 1)[0])
        elif key.startswith(cheap):
            out[key] = torch.full((), 0.01, dtype=dtype).expand(shape)
        else:
            out[key] = (torch.randn(shape, generator=g) * 0.5).to(dtype)
    return out


def save(state: dict[str, torch.Tensor], path: Path, prefix: str = "module.") -> Path:
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Random 'released' tokenizer.pt and JOWA_40M.pt (DDP 'module.' keys), converted once through
    the command line into a run folder."""
    root = tmp_path_factory.mktemp("jowa_release")
    tok = materialize(ref_tokenizer_layout(), seed=1, cheap=("lpips.",))
    wm = materialize(ref_world_layout(*SIZE_DIMS["40m"]), seed=2)
    tok_path, wm_path = save(tok, root / "tokenizer.pt"), save(wm, root / "JOWA_40M.pt")
    out = root / "run"
    games = "Assault,Pong,Breakout"
    rc = main(["jowa", "--tokenizer", str(tok_path), "--world-model", str(wm_path), "--size", "40m",
               "--games", games, "--output-dir", str(out)])
    assert rc == 0
    return {"tok": tok, "wm": wm, "tok_path": tok_path, "wm_path": wm_path, "out": out,
            "games": games.split(",")}


@pytest.fixture(scope="module")
def loaded(released):
    algo, run, ckpt = load_algo(released["out"], device="cpu")
    return algo, run, ckpt


# ------------------------------------------------------------------------------ layouts and facts


@pytest.mark.parametrize("size", sorted(SIZES))
def test_layouts_agree_with_the_converter_and_the_released_file_sizes(size):
    ours = ref_world_layout(*SIZE_DIMS[size])
    spec = world_model_spec(SIZES[size])
    assert {k: (s, d.is_floating_point) for k, (s, d) in ours.items()} == spec
    # The released files (sizes from their Git LFS pointers) are the layouts' tensor bytes plus
    # torch.save's ~400 bytes per tensor (zip records, pickle): 400-412 for all four files. One
    # tensor more or less (a 512-float bias: 2 KB) would move this by 20 or more.
    nbytes = sum(math.prod(s) * d.itemsize for s, d in ours.values())
    per_tensor = (RELEASED[SIZES[size].release][1] - nbytes) / len(ours)
    assert 395 < per_tensor < 420, (size, per_tensor)
    tok = ref_tokenizer_layout()
    assert {k: (s, d.is_floating_point) for k, (s, d) in tok.items()} == tokenizer_spec()
    tok_bytes = sum(math.prod(s) * d.itemsize for s, d in tok.values())
    assert 395 < (RELEASED["tokenizer.pt"][1] - tok_bytes) / len(tok) < 420


def test_presets_and_reference_facts():
    for size in SIZES.values():
        cfg = PRESETS[size.preset]
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.q_hidden, cfg.q_heads) == (
            size.layers, size.heads, size.embed, size.q_hidden, size.num_q)
        assert cfg.vocab_size == 2048 and cfg.num_atoms == 51 and (cfg.v_min, cfg.v_max) == (-10.0, 30.0)
        assert isinstance(cfg.tokenizer, RefTokenizerConfig)
        base = PRESETS[size.preset[: -len("-ref")]]
        assert cfg.tokenizer != base.tokenizer and not isinstance(base.tokenizer, RefTokenizerConfig)
    assert not isinstance(JOWA.build("jowa-tiny", ["Pong"]).model.tokenizer, RefTokenizer)
    # The reference's task rows: GAME_NAMES, the 60 DQN-Replay games alphabetically.
    from workbench.convert import REFERENCE_GAMES
    assert REFERENCE_GAMES == DQN_REPLAY_GAMES and len(REFERENCE_GAMES) == 60
    # Spot checks of the reference's _LIMITED_ACTION_SET against the minimal sets (ALE ids).
    assert set(minimal_action_set("Atlantis")) == {0, 1, 11, 12}  # NOOP FIRE RIGHTFIRE LEFTFIRE
    assert set(minimal_action_set("Asterix")) == {0, 2, 3, 4, 5, 6, 7, 8, 9}  # no FIRE
    assert set(minimal_action_set("Freeway")) == {0, 2, 5}
    assert set(minimal_action_set("KungFuMaster")) == {0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17}


def test_ref_tokenizer_has_the_reference_layout_and_36_tokens():
    tok = RefTokenizer(RefTokenizerConfig())
    renamed = {"pre_quant.": "pre_quant_conv.", "codebook.": "embedding.", "post_quant.": "post_quant_conv."}
    keys = {}
    for k, v in tok.state_dict().items():
        for a, b in renamed.items():
            k = b + k[len(a):] if k.startswith(a) else k
        keys[k] = tuple(v.shape)
    assert keys == {k: s for k, (s, _) in ref_tokenizer_layout(lpips=False).items()}
    frames = torch.randint(0, 256, (2, 3, 84, 84), dtype=torch.uint8)
    tokens = tok.encode(frames)
    assert tokens.shape == (2, 3, TOKENS_PER_FRAME) and tokens.dtype == torch.int64
    recon = tok.decode(tokens)
    assert recon.shape == (2, 3, 84, 84) and float(recon.min()) >= 0 and float(recon.max()) <= 1
    loss, metrics = tok.loss(frames[0])
    assert torch.isfinite(loss) and "tokenizer/l1" in metrics


def test_ref_tokenizer_refuses_a_geometry_without_36_tokens():
    with pytest.raises(ValueError, match="144 tokens.*36 tokens per frame"):
        RefTokenizerConfig(down_scales=(7, 1), up_scales=(7, 1))


def _functional_encode(src: dict[str, torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
    """The reference encoder + quantizer, written with torch.nn.functional on its own keys."""
    def gn(x, p):
        return F.group_norm(x, 2, src[f"{p}.weight"], src[f"{p}.bias"], eps=1e-6)

    def conv(x, p, **kw):
        return F.conv2d(x, src[f"{p}.weight"], src[f"{p}.bias"], **kw)

    def res(x, p):
        h = conv(F.silu(gn(x, f"{p}.norm1")), f"{p}.conv1", padding=1)
        return x + conv(F.silu(gn(h, f"{p}.norm2")), f"{p}.conv2", padding=1)

    def attn(x, p):
        B, C, H, W = x.shape
        h = gn(x, f"{p}.norm")
        q, k, v = (conv(h, f"{p}.{n}").reshape(B, C, H * W) for n in "qkv")
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * C ** -0.5, dim=2)  # (query i, key j)
        y = torch.einsum("bcj,bij->bci", v, w).reshape(B, C, H, W)
        return x + conv(y, f"{p}.proj_out")

    x = frames.float()[:, None] / 255 * 2 - 1
    h = conv(x, "encoder.conv_in", padding=1)
    for level in range(3):
        for b in range(2):
            h = res(h, f"encoder.down.{level}.block.{b}")
            if level > 0:
                h = attn(h, f"encoder.down.{level}.attn.{b}")
        if level < 2:
            h = conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{level}.downsample.conv", stride=(7, 2)[level])
    h = res(attn(res(h, "encoder.mid.block_1"), "encoder.mid.attn_1"), "encoder.mid.block_2")
    z = conv(conv(F.silu(gn(h, "encoder.norm_out")), "encoder.conv_out", padding=1), "pre_quant_conv")
    flat = z.permute(0, 2, 3, 1).reshape(-1, 512).double()
    return torch.cdist(flat, src["embedding.weight"].double()).argmin(1).view(len(frames), 36)


def _functional_q(src: dict[str, torch.Tensor], tokens: torch.Tensor, task: torch.Tensor, heads: int,
                  num_q: int) -> torch.Tensor:
    """The reference JOWAModel's expected Q (agent.choose_action, without its Q-head dropout) at
    every step's last observation token, on its own keys."""
    B, T = tokens.shape
    is_act = (torch.arange(T) % 37) == 36
    emb = torch.where(is_act[None, :, None], src["embedder.embedding_tables.0.weight"][tokens.clamp(max=17)],
                      src["embedder.embedding_tables.1.weight"][tokens])
    task_emb = torch.where(is_act[None, :, None], src["task_emb.embedding_tables.0.weight"][task][:, None],
                           src["task_emb.embedding_tables.1.weight"][task][:, None])
    x = emb + src["pos_emb.weight"][:T] + task_emb
    D = x.shape[-1]

    def lin(h, p):
        return F.linear(h, src[f"{p}.weight"], src[f"{p}.bias"])

    def ln(h, p):
        return F.layer_norm(h, (h.shape[-1],), src[f"{p}.weight"], src[f"{p}.bias"])

    for b in range(sum(1 for k in src if k.startswith("transformer.blocks.") and k.endswith(".ln1.weight"))):
        p = f"transformer.blocks.{b}"
        h = ln(x, f"{p}.ln1")
        q, k, v = (lin(h, f"{p}.attn.{n}").view(B, T, heads, D // heads).transpose(1, 2)
                   for n in ("query", "key", "value"))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D // heads)
        att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, T, D), f"{p}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{p}.ln2"), f"{p}.mlp.0")), f"{p}.mlp.2")
    feats = ln(x, "transformer.ln_f")[:, 35::37]
    probs = []
    for m in range(num_q):
        P = [src[f"head_q.head_module.params.{j}"][m] for j in range(10)]
        h = F.mish(F.layer_norm(F.linear(feats, P[0], P[1]), (P[0].shape[0],), P[2], P[3]))
        h = F.mish(F.layer_norm(F.linear(h, P[4], P[5]), (P[4].shape[0],), P[6], P[7]))
        probs.append(F.linear(h, P[8], P[9]).view(B, -1, 18, 51).softmax(-1))
    return (torch.stack(probs).mean(0) * torch.linspace(-10, 30, 51)).sum(-1)


def test_mapped_world_model_computes_what_the_reference_computes():
    """A small reference-shaped model (3 Q heads, as the 150M's) mapped into a WorldActionModel
    gives the reference's expected Q, written functionally on the source keys."""
    size = RefSize("small", layers=2, heads=4, embed=64, q_hidden=32, num_q=3, release="-")
    src = materialize(ref_world_layout(2, 64, 32, 3), seed=3)
    for key in src:  # LayerNorm weights around 1, as trained ones are
        if key.endswith((".ln1.weight", ".ln2.weight", "ln_f.weight")):
            src[key] = 1.0 + 0.1 * src[key]
    games = ["Pong", "Assault", "Breakout"]
    mapped = map_world_model(src, size, games)
    cfg = world_action_config("jowa-40m-ref", n_layer=2, n_head=4, n_embd=64, q_hidden=32, q_heads=3, num_games=3)
    model = WorldActionModel(cfg).eval()
    model.load_state_dict({k[len("world."):]: v for k, v in mapped.state.items()}, strict=True)
    g = torch.Generator().manual_seed(4)
    obs = torch.randint(0, 2048, (3, 4, 36), generator=g)
    act = torch.randint(0, 18, (3, 4), generator=g)
    with torch.no_grad():
        q = model.q_values(model(obs, act, torch.arange(3))["q_logits"])
    tokens = torch.cat([obs, act[..., None]], -1).view(3, -1)
    task = torch.tensor([DQN_REPLAY_GAMES.index(name) for name in games])
    with torch.no_grad():
        ref = _functional_q(src, tokens, task, heads=4, num_q=3)
    torch.testing.assert_close(q, ref, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ the converted run


def _expected(key: str, src: dict[str, torch.Tensor], games: list[str]) -> list[tuple[str, torch.Tensor]]:
    """Where the test expects source world-model key ``key`` in the JOWA model."""
    rows = [DQN_REPLAY_GAMES.index(g) for g in games]
    v = src[key]
    parts = key.split(".")
    if key == "pos_emb.weight":
        return [("world.gpt.pos_emb.weight", v)]
    if key.startswith("embedder."):
        return [(("world.act_emb.weight", "world.obs_emb.weight")[int(parts[2])], v)]
    if key.startswith("task_emb."):
        return [(("world.task_act_emb.weight", "world.task_obs_emb.weight")[int(parts[2])], v[rows])]
    if key.startswith("transformer.ln_f."):
        return [(f"world.gpt.ln_f.{parts[-1]}", v)]
    if key.startswith("transformer.blocks."):
        b, rest = parts[2], ".".join(parts[3:])
        name = {"ln1": "ln_1", "ln2": "ln_2"}.get(parts[3], parts[3])
        if parts[3] == "attn" and parts[4] in ("query", "key", "value"):
            D = v.shape[0]
            i = ("query", "key", "value").index(parts[4])
            return [(f"world.gpt.blocks.{b}.attn.qkv.{parts[-1]}", (i * D, (i + 1) * D, v))]
        rest = rest.replace(parts[3], name, 1)
        return [(f"world.gpt.blocks.{b}.{rest}", v)]
    heads = {"head_observations": "world.obs_head", "head_rewards": "world.reward_head",
             "head_ends": "world.term_head"}
    if parts[0] in heads and parts[1] == "head_module":
        return [(f"{heads[parts[0]]}.{parts[2]}.{parts[3]}", v)]
    if parts[0] in ("head_q", "head_q_target") and parts[1] == "head_module":
        layer = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "5.weight", "5.bias",
                 "7.weight", "7.bias"][int(parts[3])]
        base = "world.q_head" if parts[0] == "head_q" else "world.target_q_head.module"
        return [(f"{base}.heads.{h}.{layer}", v[h]) for h in range(v.shape[0])]
    return []  # index buffers: dropped


def test_every_weight_appears_at_its_mapped_place(released, loaded):
    algo, _, _ = loaded
    state = algo.model.state_dict()
    covered = set()
    for key in released["wm"]:
        targets = _expected(key, released["wm"], released["games"])
        assert targets or key.endswith(".indices"), key
        for target, value in targets:
            covered.add(target)
            if isinstance(value, tuple):  # a slice of the stacked qkv projection
                lo, hi, part = value
                torch.testing.assert_close(state[target][lo:hi], part, rtol=0, atol=0)
            else:
                torch.testing.assert_close(state[target], value, rtol=0, atol=0, msg=f"{key} -> {target}")
    renamed = {"pre_quant_conv.": "pre_quant.", "embedding.": "codebook.", "post_quant_conv.": "post_quant."}
    for key, value in released["tok"].items():
        if key.startswith("lpips."):
            continue
        target = key
        for a, b in renamed.items():
            target = b + key[len(a):] if key.startswith(a) else target
        covered.add("tokenizer." + target)
        torch.testing.assert_close(state["tokenizer." + target], value, rtol=0, atol=0)
    assert covered == set(state)  # every weight of the workbench model came from the source


def test_run_records_provenance_and_every_dropped_key(released, loaded):
    _, run, ckpt = loaded
    assert run.kind == "pretrain" and run.algo_name == "jowa" and run.model == "jowa-40m-ref"
    assert run.games == tuple(released["games"])
    info = run.resolved["converted_from"]
    files = info["files"]
    assert files["tokenizer"]["name"] == "tokenizer.pt" and files["world_model"]["name"] == "JOWA_40M.pt"
    assert files["world_model"]["bytes"] == released["wm_path"].stat().st_size
    assert len(files["tokenizer"]["sha256"]) == 64 and files["tokenizer"]["released_as"] is None
    assert files["tokenizer"]["key_prefix"] == "module." and files["world_model"]["dtypes"] == ["torch.float32",
                                                                                                  "torch.int64"]
    assert info["task_rows"] == {"Assault": 3, "Pong": 39, "Breakout": 13}
    assert info["untrained_task_rows"] == ["Pong", "Breakout"]
    dropped = info["dropped_keys"]
    assert sorted(dropped["tokenizer.lpips"]) == sorted(k for k in released["tok"] if k.startswith("lpips."))
    assert sorted(dropped["world_model.indices"]) == sorted(k for k in released["wm"] if k.endswith(".indices"))
    assert len(dropped["world_model.task_rows"]) == 2 * 57
    assert set(info["dropped"]) == {"lpips", "indices", "task_rows"}
    n_tok = sum(1 for k in released["tok"] if not k.startswith("lpips."))
    n_wm = sum(1 for k in released["wm"] if not k.endswith(".indices"))
    assert info["mapped_keys"] == {"tokenizer": n_tok, "world_model": n_wm}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 0 and state["extra"]["converted_from"]["size"] == "40m"


def test_round_trip_policy_acts_on_frames(released, loaded):
    algo, _, _ = loaded
    assert isinstance(algo.model.tokenizer, RefTokenizer)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    games = np.array([1, 2])  # Pong, Breakout: 6 and 4 minimal actions
    greedy = algo.policy(EvalOptions(planning_horizon=0))
    a = greedy.act(obs, games)
    assert a.dtype == np.int64 and a.shape == (2,) and 0 <= a[0] < 6 and 0 <= a[1] < 4
    planner = algo.policy(EvalOptions(planning_horizon=1, beam_width=2))
    for _ in range(2):  # the second decision plans with the first step as context
        b = planner.act(obs, games)
        assert 0 <= b[0] < 6 and 0 <= b[1] < 4
        planner.observe(b, np.zeros(2, dtype=np.float32))


def test_converted_tokenizer_encodes_like_the_reference(released, loaded):
    algo, _, _ = loaded
    frames = torch.randint(0, 256, (3, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    ours = algo.model.tokenizer.encode(frames)
    ref = _functional_encode(released["tok"], frames)
    assert (ours == ref).float().mean() > 0.99  # nearest codes: fp32 vs float64 may flip a near tie


# ------------------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def cheap(tmp_path_factory):
    """Small files with the released layouts (stride-0 values), for the refusal tests."""
    root = tmp_path_factory.mktemp("jowa_cheap")
    tok = materialize(ref_tokenizer_layout(), cheap=("",))
    wm = materialize(ref_world_layout(*SIZE_DIMS["40m"]), cheap=("",))
    return root, tok, wm


def _broken(state, how: str, key: str) -> dict[str, torch.Tensor]:
    state = dict(state)
    if how == "missing":
        del state[key]
    elif how == "extra":
        state[key] = torch.zeros(3)
    elif how == "shape":
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    elif how == "nan":
        bad = state[key].clone()
        bad.view(-1)[7] = float("nan")
        state[key] = bad
    elif how == "dtype":
        state[key] = state[key].long()
    return state


@pytest.mark.parametrize("which, how, key", [
    ("world_model", "missing", "transformer.blocks.2.attn.value.bias"),
    ("world_model", "extra", "head_q.log_alpha"),
    ("world_model", "shape", "head_q.head_module.params.8"),
    ("world_model", "nan", "head_q_target.head_module.params.4"),
    ("world_model", "dtype", "pos_emb.weight"),
    ("tokenizer", "missing", "encoder.down.1.attn.0.q.weight"),
    ("tokenizer", "extra", "decoder.up.0.attn.0.q.weight"),
    ("tokenizer", "shape", "embedding.weight"),
    ("tokenizer", "nan", "lpips.lin2.model.1.weight"),
])
def test_refusals_name_the_key_before_creating_the_folder(cheap, tmp_path, which, how, key):
    root, tok, wm = cheap
    tok_state = _broken(tok, how, key) if which == "tokenizer" else tok
    wm_state = _broken(wm, how, key) if which == "world_model" else wm
    tok_path, wm_path = save(tok_state, tmp_path / "tokenizer.pt"), save(wm_state, tmp_path / "JOWA_40M.pt")
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")) as err:
        convert_jowa(tok_path, wm_path, out)
    assert str(tok_path if which == "tokenizer" else wm_path) in str(err.value)
    assert not out.exists()


def test_size_mismatch_prefixes_and_output_folder(cheap, tmp_path):
    root, tok, wm = cheap
    tok_path, wm_path = save(tok, tmp_path / "tokenizer.pt"), save(wm, tmp_path / "JOWA_40M.pt")
    with pytest.raises(ConversionError, match="--size 70m was given but .* is the 40m model"):
        convert_jowa(tok_path, wm_path, tmp_path / "out", size="70m")
    with pytest.raises(ConversionError, match="matches no released size: it has 3 transformer blocks"):
        convert_jowa(tok_path, save({k: v for k, v in wm.items() if "blocks.3." not in k}, tmp_path / "w3.pt"),
                     tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        convert_jowa(tok_path, wm_path, busy)
    for prefix in ("", "_orig_mod.module.", "_orig_mod."):
        state, found = read_state_dict(save(tok, tmp_path / "p.pt", prefix=prefix), "tokenizer")
        assert found == prefix and set(state) == set(tok)
    mixed = {("module." if i % 2 else "") + k: v for i, (k, v) in enumerate(tok.items())}
    torch.save(mixed, tmp_path / "mixed.pt")
    state, found = read_state_dict(tmp_path / "mixed.pt", "tokenizer")
    assert found == ""  # then the check names every key as unexpected
    with pytest.raises(ConversionError, match="not a non-empty state_dict"):
        torch.save([1, 2], tmp_path / "list.pt")
        read_state_dict(tmp_path / "list.pt", "tokenizer")
    with pytest.raises(ValueError, match="no task embedding"):
        convert_jowa(tok_path, wm_path, tmp_path / "out", games="MinAtar-Breakout")
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_refusal(cheap, tmp_path, capsys):
    root, tok, wm = cheap
    tok_path = save(_broken(tok, "missing", "embedding.weight"), tmp_path / "tokenizer.pt")
    wm_path = save(wm, tmp_path / "JOWA_40M.pt")
    rc = main(["jowa", "--tokenizer", str(tok_path), "--world-model", str(wm_path), "--output-dir",
               str(tmp_path / "out")])
    assert rc == 2 and "missing keys embedding.weight" in capsys.readouterr().err
    assert GAME_SETS["jowa_15"][0] == "Assault"  # the default games: the 15 pretraining games


# ------------------------------------------------------------------------------ released scores


def test_released_raw_scores_are_package_data_with_their_source():
    """workbench/reference/jowa_released_scores.csv: the reference repository's
    eval/JOWA_{40M,70M,150M}_raw_scores.json (16 episodes per game, beam search with the per-game
    beam width, horizon and buffer_size, i.e. the steps of context, it lists), one row per episode.
    These are the repository's numbers after its hyperparameter correction (README note), not
    the paper's Table 2."""
    import csv
    from importlib import resources

    text = resources.files("workbench.reference").joinpath("jowa_released_scores.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 3 * 15 * 16
    assert {r["model"] for r in rows} == {"JOWA-40M", "JOWA-70M", "JOWA-150M"}
    for model in ("JOWA-40M", "JOWA-70M", "JOWA-150M"):
        mine = [r for r in rows if r["model"] == model]
        assert {r["game"] for r in mine} == set(GAME_SETS["jowa_15"])
        assert all(r["source"].startswith("https://github.com/CJReinforce/JOWA/blob/")
                   and r["source"].endswith(f"eval/{model.replace('-', '_')}_raw_scores.json") for r in mine)
        for game in GAME_SETS["jowa_15"]:
            assert sorted(int(r["episode"]) for r in mine if r["game"] == game) == list(range(16))
    sq = [float(r["raw_score"]) for r in rows if r["model"] == "JOWA-150M" and r["game"] == "Seaquest"]
    assert sq[:3] == [1080.0, 1160.0, 1160.0] and {r["beam_width"] for r in rows if r["game"] == "Seaquest"} == {"4"}

"""Import the reference's checkpoints: every key accounted for, LoRA merged, names translated.

The reference loads its state dicts with ``strict=False``, so a renamed or missing key silently
leaves random weights in the network. Here every key is either used, or on a short, named list
of tensors the computation never reads (DINOv2's ``mask_token``, CLIP's ``position_ids``
buffer, the training loss's buffers and an SWA average's sample count beside the backbone);
anything else fails with an error that names it.

Accepted layouts (after the ``backbone.`` / ``module.backbone.`` prefix):

* ``vision_model.`` DINOv2, optionally under peft's ``base_model.model.``; attention as
  transformers 4.x names it (``attention.attention.query|key|value``, ``attention.output.dense``)
  or 5.x-style (``attention.q_proj|k_proj|v_proj|o_proj``); SwiGLU FFN as ``mlp.weights_in`` /
  ``mlp.weights_out`` (4.x, gate then value packed) or ``mlp.gate_proj`` + ``mlp.up_proj`` /
  ``mlp.down_proj``; the plain FFN as ``mlp.fc1`` / ``mlp.fc2``.
* LoRA-wrapped linears in peft's current layout (``X.base_layer.weight`` + ``X.lora_A.default``
  / ``X.lora_B.default``) or its older one (``X.weight`` beside the adapters). They are merged
  as ``W + (alpha / r) * B @ A`` in float32.
* ``clip_model.vision_model.`` a transformers ``CLIPVisionModel`` (fusion stream only).
* heads: ``last_layer.`` (global/face) or ``fusion_head.0.`` / ``fusion_head.3.`` (fusion).

The files themselves (``.pth``, safetensors) are read by :mod:`dfd.export.checkpoint_files`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_files import CheckpointError, read_state_dict
from .configs import FUSION_HIDDEN, NUM_CLASSES, STREAM_SPECS, ClipVisionConfig, DinoV2Config, LoraSettings
from .towers import interpolate_position_grid

_PREFIXES = ("module.backbone.", "backbone.")
_PEFT_PREFIX = "base_model.model."
_ADAPTER = "default"
# Tensors the inference computation never reads; accounted for by name, then dropped.
_UNUSED_DINO = {"embeddings.mask_token"}
_UNUSED_CLIP = {"embeddings.position_ids"}
# Training-only entries of the reference's detector state dict, outside its backbone: the buffers of
# its training loss (cross_entropy_weighted's class weights, region_independent's centres and
# margin), also under DataParallel's ``module.``, and the sample count an SWA ``AveragedModel``
# saves beside the model (whose keys it prefixes with ``module.``). The reference's strict=False
# load skips them; here they are accounted for by name, then dropped.
_TRAINING_ONLY = {f"{prefix}loss_func.{buffer}" for prefix in ("", "module.")
                  for buffer in ("class_weights", "feature_centers", "intra_margin")} | {"n_averaged"}
# 5.x-style names -> the 4.x names the rest of this module speaks.
_DINO_ALIASES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}


@dataclass
class _Tensor:
    value: torch.Tensor
    source: str  # the checkpoint key it came from, for error messages


def _put(out: dict[str, _Tensor], name: str, tensor: _Tensor, problems: list[str]) -> None:
    """Store ``tensor`` as ``name`` unless another key already gave that name.

    Two spellings of one weight (``module.backbone.`` beside ``backbone.``, ``query.weight`` beside
    ``query.base_layer.weight``, a 5.x alias beside its 4.x name) would otherwise let the later key
    silently replace the one the reference actually loads; which of them a ``strict=False`` load
    uses depends on the reference's wrapper, so the checkpoint is ambiguous and refused."""
    earlier = out.get(name)
    if earlier is not None:
        problems.append(f"ambiguous keys: {earlier.source} and {tensor.source} both give {name}")
        return
    out[name] = tensor


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor], problems: list[str]) -> dict[str, _Tensor]:
    stripped: dict[str, _Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                _put(stripped, key[len(prefix):], _Tensor(value, key), problems)
                break
        else:
            if key not in _TRAINING_ONLY:
                problems.append(f"unexpected key (no backbone. prefix): {key}")
    return stripped


def _not_floating_point(tensors: Mapping[str, _Tensor], problems: list[str]) -> None:
    """Name every weight that is not floating point. An integer or boolean tensor in a weight's
    place (a quantised export, a tensor saved by mistake) was converted to float32 and built into
    an engine without a word; only the unused buffers (CLIP's ``position_ids``) may be integers."""
    for name, tensor in tensors.items():
        if not tensor.value.is_floating_point() and not name.endswith(tuple(f".{u}" for u in _UNUSED_CLIP)):
            problems.append(f"non-floating-point key: {tensor.source} is {str(tensor.value.dtype).removeprefix('torch.')}"
                            f", not the floating-point weights the network computes with")


def _non_finite_weights(tensors: Mapping[str, _Tensor]) -> list[str]:
    """Name every floating-point tensor holding NaN or infinity, with counts.

    A diverged or corrupted training run saves such weights without complaint; built into an
    engine set they would fail every image at run time, so the build refuses them here."""
    problems = []
    for tensor in tensors.values():
        value = tensor.value
        if value.is_meta or not value.is_floating_point() or bool(torch.isfinite(value).all()):
            continue  # one pass for the usual finite tensor; counting only when something is wrong
        nan = int(torch.isnan(value).sum())
        inf = int(torch.isinf(value).sum())
        if nan or inf:
            problems.append(f"{tensor.source}: {nan} NaN and {inf} infinite of {value.numel()} values")
    return problems


def _merge_lora(tensors: dict[str, _Tensor], lora: LoraSettings, problems: list[str]) -> dict[str, _Tensor]:
    """Fold every LoRA adapter into its base weight; both peft layouts."""
    adapters: dict[str, dict[str, _Tensor]] = {}
    plain: dict[str, _Tensor] = {}
    pattern = re.compile(r"^(.*)\.lora_([AB])\.([^.]+)\.weight$")
    for name, tensor in tensors.items():
        match = pattern.match(name)
        if match is None:
            plain[name] = tensor
            continue
        module, which, adapter = match.groups()
        if adapter != _ADAPTER:
            problems.append(f"unexpected LoRA adapter {adapter!r}: {tensor.source}")
            continue
        adapters.setdefault(module, {})[which] = tensor
    merged: dict[str, _Tensor] = {}
    for name, tensor in plain.items():
        _put(merged, name.replace(".base_layer.", "."), tensor, problems)
    other_rank: dict[int, list[str]] = {}  # well-formed adapters of another rank than --lora-r
    for module, pair in adapters.items():
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            problems.append(f"missing key: {module}.{missing}.{_ADAPTER}.weight (its pair is present)")
            continue
        base = merged.get(f"{module}.weight")
        if base is None:
            problems.append(f"missing key: {module}.base_layer.weight (LoRA adapters without a base weight)")
            continue
        a, b = pair["A"].value, pair["B"].value
        if base.value.ndim != 2 or a.ndim != 2 or b.ndim != 2:
            problems.append(f"LoRA adapter on {module}, whose weight is {tuple(base.value.shape)}: only adapters on "
                            f"linear layers (the reference's query/key/value/dense) can be merged ({pair['A'].source})")
            continue
        out_f, in_f = base.value.shape
        rank = a.shape[0]
        if rank != lora.r and a.shape == (rank, in_f) and b.shape == (out_f, rank):
            other_rank.setdefault(rank, []).append(pair["A"].source)
            continue
        if a.shape != (lora.r, in_f) or b.shape != (out_f, lora.r):
            problems.append(
                f"mis-shaped LoRA adapter for {module}: lora_A {tuple(a.shape)}, lora_B "
                f"{tuple(b.shape)}; expected ({lora.r}, {in_f}) and ({out_f}, {lora.r}) for r={lora.r} "
                f"({pair['A'].source})"
            )
            continue
        delta = (b.to(torch.float32) @ a.to(torch.float32)) * lora.scale
        value = base.value.to(torch.float32) + delta
        if not value.is_meta and not bool(torch.isfinite(value).all()):
            problems.append(f"merging the LoRA adapter of {module} overflows float32 (scale alpha/r = "
                            f"{lora.scale:g}); check --lora-r and --lora-alpha ({pair['A'].source})")
            continue
        merged[f"{module}.weight"] = _Tensor(value, base.source)
    for rank, sources in sorted(other_rank.items()):
        problems.append(f"{len(sources)} LoRA adapter(s) have rank {rank}, not --lora-r {lora.r} (e.g. {sources[0]}): "
                        f"build with --lora-r {rank} and the --lora-alpha they were trained with (the checkpoint "
                        f"does not store alpha)")
    return merged


def _sub(tensors: dict[str, _Tensor], prefix: str) -> dict[str, _Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _canonical_dino(tensors: dict[str, _Tensor], problems: list[str]) -> dict[str, _Tensor]:
    """Translate 5.x-style names and split ``gate_proj``/``up_proj`` back into ``weights_in``."""
    out: dict[str, _Tensor] = {}
    gate_up: dict[str, dict[str, _Tensor]] = {}
    for name, tensor in tensors.items():
        match = re.match(r"^(encoder\.layer\.\d+\.)(.*)$", name)
        if match:
            layer, rest = match.groups()
            for new, old in _DINO_ALIASES.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
                    break
            gate = re.match(r"^mlp\.(gate_proj|up_proj)\.(weight|bias)$", rest)
            if gate:
                gate_up.setdefault(f"{layer}mlp.weights_in.{gate.group(2)}", {})[gate.group(1)] = tensor
                continue
            name = layer + rest
        _put(out, name, tensor, problems)
    for name, parts in gate_up.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            have = next(iter(parts.values())).source
            problems.append(f"gate_proj and up_proj must come together: only {have}")
            continue
        value = torch.cat((parts["gate_proj"].value, parts["up_proj"].value), dim=0)
        _put(out, name, _Tensor(value, f"{parts['gate_proj'].source} + {parts['up_proj'].source}"), problems)
    return out


def _dino_shapes(cfg: DinoV2Config) -> dict[str, tuple[int, ...]]:
    d, hidden = cfg.hidden_size, cfg.mlp_hidden_size
    grid = cfg.pretrained_grid
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, grid * grid + 1, d),
        "embeddings.patch_embeddings.projection.weight": (d, cfg.num_channels, cfg.patch_size, cfg.patch_size),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    ffn = (
        {"mlp.weights_in": (2 * hidden, d), "mlp.weights_out": (d, hidden)}
        if cfg.use_swiglu_ffn
        else {"mlp.fc1": (hidden, d), "mlp.fc2": (d, hidden)}
    )
    linears = {
        "attention.attention.query": (d, d),
        "attention.attention.key": (d, d),
        "attention.attention.value": (d, d),
        "attention.output.dense": (d, d),
        **ffn,
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for norm in ("norm1", "norm2"):
            shapes[p + norm + ".weight"] = (d,)
            shapes[p + norm + ".bias"] = (d,)
        shapes[p + "layer_scale1.lambda1"] = (d,)
        shapes[p + "layer_scale2.lambda1"] = (d,)
        for name, shape in linears.items():
            shapes[f"{p}{name}.weight"] = shape
            if name.startswith("attention.attention.") and not cfg.qkv_bias:
                continue
            shapes[f"{p}{name}.bias"] = (shape[0],)
    return shapes


def _clip_shapes(cfg: ClipVisionConfig) -> dict[str, tuple[int, ...]]:
    d, inter = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.class_embedding": (d,),
        "embeddings.patch_embedding.weight": (d, cfg.num_channels, cfg.patch_size, cfg.patch_size),
        "embeddings.position_embedding.weight": (cfg.grid * cfg.grid + 1, d),
        "pre_layrnorm.weight": (d,),
        "pre_layrnorm.bias": (d,),
        "post_layernorm.weight": (d,),
        "post_layernorm.bias": (d,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (d, d)
            shapes[f"{p}self_attn.{proj}.bias"] = (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (d,)
            shapes[f"{p}{norm}.bias"] = (d,)
        shapes[f"{p}mlp.fc1.weight"] = (inter, d)
        shapes[f"{p}mlp.fc1.bias"] = (inter,)
        shapes[f"{p}mlp.fc2.weight"] = (d, inter)
        shapes[f"{p}mlp.fc2.bias"] = (d,)
    return shapes


def _account(
    component: str,
    tensors: dict[str, _Tensor],
    expected: dict[str, tuple[int, ...]],
    unused: set[str],
    problems: list[str],
) -> dict[str, torch.Tensor]:
    """Check a component's tensors against the expected names and shapes; name every problem."""
    for name in sorted(set(tensors) - set(expected) - unused):
        problems.append(f"unexpected key: {tensors[name].source}")
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing key: {component}{name}")
    for name in sorted(set(expected) & set(tensors)):
        shape = tuple(tensors[name].value.shape)
        if shape != expected[name]:
            problems.append(f"mis-shaped key: {tensors[name].source} is {shape}, expected {expected[name]}")
    return {k: v.value.to(torch.float32) for k, v in tensors.items() if k in expected}


def _dino_component(
    tensors: dict[str, _Tensor], cfg: DinoV2Config, lora: LoraSettings, problems: list[str]
) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith(_PEFT_PREFIX) for k in tensors):
        tensors = _sub(tensors, _PEFT_PREFIX)
    tensors = _merge_lora(tensors, lora, problems)
    tensors = _canonical_dino(tensors, problems)
    return _account("backbone.vision_model.", tensors, _dino_shapes(cfg), _UNUSED_DINO, problems)


def _clip_component(tensors: dict[str, _Tensor], cfg: ClipVisionConfig, problems: list[str]) -> dict[str, torch.Tensor]:
    inner = _sub(tensors, "vision_model.")
    for name in sorted(set(tensors) - {f"vision_model.{k}" for k in inner}):
        problems.append(f"unexpected key: {tensors[name].source}")
    return _account("backbone.clip_model.vision_model.", inner, _clip_shapes(cfg), _UNUSED_CLIP, problems)


def _dino_to_timm(w: dict[str, torch.Tensor], cfg: DinoV2Config, input_size: int, prefix: str) -> dict[str, torch.Tensor]:
    grid = input_size // cfg.patch_size
    out = {
        f"{prefix}cls_token": w["embeddings.cls_token"],
        f"{prefix}pos_embed": interpolate_position_grid(w["embeddings.position_embeddings"], grid),
        f"{prefix}patch_embed.proj.weight": w["embeddings.patch_embeddings.projection.weight"],
        f"{prefix}patch_embed.proj.bias": w["embeddings.patch_embeddings.projection.bias"],
        f"{prefix}norm.weight": w["layernorm.weight"],
        f"{prefix}norm.bias": w["layernorm.bias"],
    }
    fc1, fc2 = ("weights_in", "weights_out") if cfg.use_swiglu_ffn else ("fc1", "fc2")
    for i in range(cfg.num_hidden_layers):
        src, dst = f"encoder.layer.{i}.", f"{prefix}blocks.{i}."
        qkv = [w[f"{src}attention.attention.{n}.weight"] for n in ("query", "key", "value")]
        out[f"{dst}attn.qkv.weight"] = torch.cat(qkv, dim=0)
        if cfg.qkv_bias:
            bias = [w[f"{src}attention.attention.{n}.bias"] for n in ("query", "key", "value")]
            out[f"{dst}attn.qkv.bias"] = torch.cat(bias, dim=0)
        out[f"{dst}attn.proj.weight"] = w[f"{src}attention.output.dense.weight"]
        out[f"{dst}attn.proj.bias"] = w[f"{src}attention.output.dense.bias"]
        for norm in ("norm1", "norm2"):
            out[f"{dst}{norm}.weight"] = w[f"{src}{norm}.weight"]
            out[f"{dst}{norm}.bias"] = w[f"{src}{norm}.bias"]
        out[f"{dst}ls1.gamma"] = w[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = w[f"{src}layer_scale2.lambda1"]
        for theirs, ours in ((fc1, "fc1"), (fc2, "fc2")):
            out[f"{dst}mlp.{ours}.weight"] = w[f"{src}mlp.{theirs}.weight"]
            out[f"{dst}mlp.{ours}.bias"] = w[f"{src}mlp.{theirs}.bias"]
    return out


def _clip_to_open_clip(w: dict[str, torch.Tensor], cfg: ClipVisionConfig, prefix: str) -> dict[str, torch.Tensor]:
    out = {
        f"{prefix}class_embedding": w["embeddings.class_embedding"],
        f"{prefix}positional_embedding": w["embeddings.position_embedding.weight"],
        f"{prefix}conv1.weight": w["embeddings.patch_embedding.weight"],
        f"{prefix}ln_pre.weight": w["pre_layrnorm.weight"],
        f"{prefix}ln_pre.bias": w["pre_layrnorm.bias"],
        f"{prefix}ln_post.weight": w["post_layernorm.weight"],
        f"{prefix}ln_post.bias": w["post_layernorm.bias"],
    }
    for i in range(cfg.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        projections = ("q_proj", "k_proj", "v_proj")
        out[f"{dst}attn.in_proj_weight"] = torch.cat([w[f"{src}self_attn.{p}.weight"] for p in projections])
        out[f"{dst}attn.in_proj_bias"] = torch.cat([w[f"{src}self_attn.{p}.bias"] for p in projections])
        out[f"{dst}attn.out_proj.weight"] = w[f"{src}self_attn.out_proj.weight"]
        out[f"{dst}attn.out_proj.bias"] = w[f"{src}self_attn.out_proj.bias"]
        for theirs, ours in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
            out[f"{dst}{ours}.weight"] = w[f"{src}{theirs}.weight"]
            out[f"{dst}{ours}.bias"] = w[f"{src}{theirs}.bias"]
        for theirs, ours in (("fc1", "c_fc"), ("fc2", "c_proj")):
            out[f"{dst}mlp.{ours}.weight"] = w[f"{src}mlp.{theirs}.weight"]
            out[f"{dst}mlp.{ours}.bias"] = w[f"{src}mlp.{theirs}.bias"]
    return out


def convert_reference_state_dict(
    state: Mapping[str, torch.Tensor],
    stream: str,
    dino: DinoV2Config,
    clip: ClipVisionConfig | None = None,
    lora: LoraSettings = LoraSettings(),
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Reference state dict -> state dict of our stream module (``build_stream(stream, ...)``).

    Raises ``CheckpointError`` listing every tensor holding NaN or infinity, or else every
    unexpected, missing, mis-shaped or non-floating-point key.
    """
    weights, clip_weights, head = _checked_components(state, stream, dino, clip, lora, source)
    result = _dino_to_timm(weights, dino, STREAM_SPECS[stream].input_size, "dino.vit.")
    if clip_weights is not None:
        result.update(_clip_to_open_clip(clip_weights, clip, "clip.vit."))
    result.update({f"head.{k}": v for k, v in head.items()})
    return result


def _checked_components(
    state: Mapping[str, torch.Tensor],
    stream: str,
    dino: DinoV2Config,
    clip: ClipVisionConfig | None,
    lora: LoraSettings,
    source: str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    """The DINOv2, CLIP (fusion only) and head weights under the reference's names, LoRA merged,
    every key accounted for; meta tensors in, meta tensors out (no value is checked then)."""
    spec = STREAM_SPECS[stream]
    problems: list[str] = []
    tensors = _strip_wrapper_prefix(state, problems)
    _not_floating_point(tensors, problems)
    non_finite = _non_finite_weights(tensors)
    if non_finite:
        listing = "\n  ".join(non_finite)
        raise CheckpointError(f"{source} holds non-finite weights (a diverged or corrupted training run?):\n"
                              f"  {listing}")
    head_prefix = "fusion_head." if spec.uses_clip else "last_layer."
    components = ("vision_model.", "clip_model.", head_prefix) if spec.uses_clip else ("vision_model.", head_prefix)
    for name in sorted(k for k in tensors if not k.startswith(components)):
        problems.append(f"unexpected key: {tensors[name].source}")

    weights = _dino_component(_sub(tensors, "vision_model."), dino, lora, problems)
    clip_weights = None
    if spec.uses_clip:
        assert clip is not None, "the fusion stream needs a CLIP config"
        clip_weights = _clip_component(_sub(tensors, "clip_model."), clip, problems)
        head_shapes = {
            "0.weight": (FUSION_HIDDEN, dino.hidden_size + clip.hidden_size),
            "0.bias": (FUSION_HIDDEN,),
            "3.weight": (NUM_CLASSES, FUSION_HIDDEN),
            "3.bias": (NUM_CLASSES,),
        }
    else:
        head_shapes = {"weight": (NUM_CLASSES, dino.hidden_size), "bias": (NUM_CLASSES,)}
    head = _account(f"backbone.{head_prefix}", _sub(tensors, head_prefix), head_shapes, set(), problems)

    if problems:
        raise CheckpointError(f"{source} does not match the {stream} stream architecture:\n  "
                              + "\n  ".join(_diagnoses(state, tensors, stream, dino, clip) + _summarised(problems)))
    return weights, clip_weights, head


_LISTED_PER_KIND = 8


def _summarised(problems: list[str]) -> list[str]:
    """The problems, at most :data:`_LISTED_PER_KIND` of each kind (missing, unexpected,
    mis-shaped key, ...) and a count of the rest: a paper-size checkpoint built against the wrong
    config gave over a thousand lines, in which the cause could not be seen."""
    by_kind: dict[str, list[str]] = {}
    for problem in problems:
        by_kind.setdefault(problem.split(":", 1)[0], []).append(problem)
    lines = []
    for kind, listed in by_kind.items():
        lines += listed[:_LISTED_PER_KIND]
        if len(listed) > _LISTED_PER_KIND:
            lines.append(f"... and {len(listed) - _LISTED_PER_KIND} more of kind '{kind}' ({len(listed)} in all)")
    return lines


def _diagnoses(state: Mapping[str, torch.Tensor], tensors: Mapping[str, _Tensor], stream: str,
               dino: DinoV2Config, clip: ClipVisionConfig | None) -> list[str]:
    """What the key listing means, where it can be told: another stream's checkpoint, keys
    without the wrapper's prefix, or a backbone of another size than the config describes."""
    diagnoses = []
    if state and not tensors:
        diagnoses.append(f"none of its {len(state)} keys starts with backbone. or module.backbone. (e.g. "
                         f"{next(iter(state))}): it is not a state dict of the reference's wrapper")
    uses_clip = STREAM_SPECS[stream].uses_clip
    if not uses_clip and any(k.startswith(("clip_model.", "fusion_head.")) for k in tensors):
        diagnoses.append(f"it holds clip_model. and fusion_head. keys: it looks like the fusion stream's checkpoint "
                         f"(dinov2_clip.pth), not the {stream} stream's")
    if uses_clip and tensors and not any(k.startswith("clip_model.") for k in tensors):
        diagnoses.append("it has no clip_model. keys: it looks like a global or face stream's checkpoint "
                         "(dinov2_252.pth, dinov2_252_crop.pth), not the fusion stream's")
    found = _backbone_size(tensors, "vision_model.", "embeddings.cls_token", r"encoder\.layer\.(\d+)\.")
    if found and found != (dino.hidden_size, dino.num_hidden_layers):
        diagnoses.append(f"its DINOv2 has hidden size {found[0]} and {found[1]} layers, the config "
                         f"{dino.hidden_size} and {dino.num_hidden_layers}: pass --models-dir with the configs it was "
                         "trained from")
    found = _backbone_size(tensors, "clip_model.", "embeddings.class_embedding", r"encoder\.layers\.(\d+)\.")
    if uses_clip and clip is not None and found and found != (clip.hidden_size, clip.num_hidden_layers):
        diagnoses.append(f"its CLIP tower has hidden size {found[0]} and {found[1]} layers, the config "
                         f"{clip.hidden_size} and {clip.num_hidden_layers}: pass --models-dir with the configs it "
                         "was trained from")
    return diagnoses


def _backbone_size(tensors: Mapping[str, _Tensor], component: str, embedding: str,
                   layer_pattern: str) -> tuple[int, int] | None:
    """(hidden size, layers) of the backbone under ``component``, read from its keys, or None."""
    width = next((t.value.shape[-1] for k, t in tensors.items() if k.startswith(component) and k.endswith(embedding)),
                 None)
    layers = {int(m.group(1)) for k in tensors if k.startswith(component) and (m := re.search(layer_pattern, k))}
    return (int(width), max(layers) + 1) if width is not None and layers else None


def load_reference_checkpoint(
    path: Path,
    stream: str,
    dino: DinoV2Config,
    clip: ClipVisionConfig | None = None,
    lora: LoraSettings = LoraSettings(),
) -> dict[str, torch.Tensor]:
    """Read a reference ``.pth`` and convert it for our ``stream`` module (see module doc)."""
    return convert_reference_state_dict(read_state_dict(path), stream, dino, clip, lora, source=str(path))


def check_reference_checkpoint(
    path: Path,
    stream: str,
    dino: DinoV2Config,
    clip: ClipVisionConfig | None = None,
    lora: LoraSettings = LoraSettings(),
) -> None:
    """Raise the ``CheckpointError`` :func:`load_reference_checkpoint` would for a file that cannot
    be read or a key that is unexpected, missing, mis-shaped or not floating point, reading only
    the names, shapes and dtypes. A build checks every stream's checkpoint so before its long work:
    a wrong fusion checkpoint was found only after the calibration set and the other two streams
    were made. Values (NaN, infinity) are checked when the weights are loaded."""
    _checked_components(read_state_dict(path, shapes_only=True), stream, dino, clip, lora, str(path))

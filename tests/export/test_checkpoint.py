"""Checkpoint import: parity with the reference network, strict key accounting, LoRA merging."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from conftest import LORA_ALPHA, LORA_R, save_state_dict
from dfd.export.checkpoint import (CheckpointError, LoraSettings, check_reference_checkpoint, convert_reference_state_dict,
                                   load_reference_checkpoint)
from dfd.export.checkpoint_files import read_state_dict
from dfd.export.configs import load_clip_config, load_dinov2_config
from dfd.export.streams import STREAM_SPECS, build_stream
from reference_network import (
    ReferenceDinoV2,
    centre_head,
    reference_state_dict,
    tiny_dinov2_config,
    write_models_dir,
    tiny_clip_config,
)
from reference_preprocessing import stream_batch

LORA = LoraSettings(LORA_R, LORA_ALPHA)


def _configs(ensemble):
    return load_dinov2_config(ensemble.models_dir), load_clip_config(ensemble.models_dir)


def _our_stream(ensemble, name: str, state=None):
    dino, clip = _configs(ensemble)
    if state is None:
        state = read_state_dict(ensemble.weights_dir / STREAM_SPECS[name].checkpoint)
    module = build_stream(name, dino, clip)
    module.load_state_dict(convert_reference_state_dict(state, name, dino, clip, LORA), strict=True)
    return module


def _inputs(photographs, name: str, batch: int) -> torch.Tensor:
    images = list(photographs.values())
    rng = np.random.default_rng(batch)
    while len(images) < batch:
        images.append(rng.integers(0, 256, size=(260 + 7 * len(images), 300, 3), dtype=np.uint8))
    return stream_batch(images[:batch], name)


@pytest.mark.parametrize("name", ["global", "face", "fusion"])
@pytest.mark.parametrize("batch", [1, 5])
def test_stream_matches_reference_network(reference_ensemble, photographs, name, batch):
    module = _our_stream(reference_ensemble, name)
    pixels = _inputs(photographs, name, batch)
    with torch.no_grad():
        ours = torch.softmax(module(pixels), dim=1)[:, 1]
    reference = reference_ensemble.p_fake(name, pixels)
    assert torch.max(torch.abs(ours - reference)).item() <= 1e-5
    # the fixture is only a meaningful check if the streams do not output a constant
    if batch == 5:
        assert reference.max() - reference.min() > 0.1


def test_dataparallel_prefix_is_accepted(reference_ensemble, photographs):
    path = reference_ensemble.weights_dir / "dinov2_252.pth"
    state = {k.replace("backbone.", "module.backbone.", 1): v for k, v in read_state_dict(path).items()}
    pixels = _inputs(photographs, "global", 2)
    with torch.no_grad():
        ours = _our_stream(reference_ensemble, "global", state)(pixels)
        expected = _our_stream(reference_ensemble, "global")(pixels)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def _to_v5_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a 4.x checkpoint to the 5.x-style layout (q/k/v/o_proj, gate/up/down_proj)."""
    out = {}
    renames = {
        ".attention.attention.query.": ".attention.q_proj.",
        ".attention.attention.key.": ".attention.k_proj.",
        ".attention.attention.value.": ".attention.v_proj.",
        ".attention.output.dense.": ".attention.o_proj.",
        ".mlp.weights_out.": ".mlp.down_proj.",
    }
    for key, value in state.items():
        if ".mlp.weights_in." in key:
            gate, up = value.chunk(2, dim=0)
            out[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate
            out[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = up
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _to_old_peft_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


@pytest.mark.parametrize("transform", [_to_v5_names, _to_old_peft_layout], ids=["transformers5", "old-peft"])
def test_alternative_layouts_give_identical_weights(reference_ensemble, transform):
    dino, clip = _configs(reference_ensemble)
    for name in ("face", "fusion"):
        state = read_state_dict(reference_ensemble.weights_dir / STREAM_SPECS[name].checkpoint)
        expected = convert_reference_state_dict(state, name, dino, clip, LORA)
        converted = convert_reference_state_dict(transform(state), name, dino, clip, LORA)
        assert converted.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(converted[key], expected[key], rtol=0, atol=0)


def _state(reference_ensemble, name="fusion"):
    return read_state_dict(reference_ensemble.weights_dir / STREAM_SPECS[name].checkpoint)


def _convert(reference_ensemble, state, name="fusion"):
    dino, clip = _configs(reference_ensemble)
    return convert_reference_state_dict(state, name, dino, clip, LORA)


def test_renamed_key_is_named(reference_ensemble):
    state = _state(reference_ensemble)
    key = next(k for k in state if k.endswith("encoder.layer.1.norm2.weight"))
    state[key.replace("norm2", "norm_2")] = state.pop(key)
    with pytest.raises(CheckpointError) as err:
        _convert(reference_ensemble, state)
    assert key.replace("norm2", "norm_2") in str(err.value)
    assert "encoder.layer.1.norm2.weight" in str(err.value)


def test_removed_key_is_named(reference_ensemble):
    state = _state(reference_ensemble)
    key = next(k for k in state if k.endswith("clip_model.vision_model.encoder.layers.0.mlp.fc2.bias"))
    del state[key]
    with pytest.raises(CheckpointError, match=re.escape("missing key: " + key)):
        _convert(reference_ensemble, state)


@pytest.mark.parametrize("suffix", ["fusion_head.0.weight", "attention.attention.value.base_layer.weight",
                                    "attention.output.dense.lora_B.default.weight"])
def test_misshaped_key_is_named(reference_ensemble, suffix):
    state = _state(reference_ensemble)
    key = next(k for k in state if k.endswith(suffix))
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    with pytest.raises(CheckpointError) as err:
        _convert(reference_ensemble, state)
    assert "mis-shaped" in str(err.value)
    assert key.rsplit(".lora_", 1)[0].rsplit(".base_layer", 1)[0] in str(err.value)


def test_key_without_backbone_prefix_is_unexpected(reference_ensemble):
    state = _state(reference_ensemble, "global")
    state["optimizer.step"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected key \(no backbone. prefix\): optimizer.step"):
        _convert(reference_ensemble, state, "global")


def test_training_only_entries_beside_the_backbone_are_accounted_for_and_dropped(reference_ensemble):
    """The reference's trainer saves its loss module's buffers (loss_func.class_weights with the
    weighted cross-entropy, also as module.loss_func. under DataParallel) and an SWA average's
    n_averaged in the state dict; its strict=False load skips them, and so does the import."""
    state = _state(reference_ensemble, "global")
    expected = _convert(reference_ensemble, state, "global")
    swa = {key.replace("backbone.", "module.backbone.", 1): value for key, value in state.items()}
    swa.update({"n_averaged": torch.tensor(7), "module.loss_func.class_weights": torch.tensor([1.0, 3.0])})
    for extra in ({"loss_func.class_weights": torch.tensor([1.0, 3.0])},
                  {"loss_func.feature_centers": torch.zeros(2, 8), "loss_func.intra_margin": torch.tensor([0.1])}):
        converted = _convert(reference_ensemble, {**state, **extra}, "global")
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[key], expected[key]) for key in expected)
    converted = _convert(reference_ensemble, swa, "global")
    assert all(torch.equal(converted[key], expected[key]) for key in expected)
    state["loss_func.other_buffer"] = torch.zeros(1)  # a key of the loss not on the list is still named
    with pytest.raises(CheckpointError, match=r"unexpected key \(no backbone. prefix\): loss_func.other_buffer"):
        _convert(reference_ensemble, state, "global")


def test_a_checkpoint_for_another_config_says_so_in_a_short_message(reference_ensemble):
    """A tiny checkpoint against the paper's giant config gave 728 lines of missing keys that
    never said why; now the sizes are compared, and each kind of problem is listed 8 times at most."""
    from dfd.export.configs import PAPER_CLIP, PAPER_DINOV2

    dino, _ = _configs(reference_ensemble)
    with pytest.raises(CheckpointError) as err:
        convert_reference_state_dict(_state(reference_ensemble, "global"), "global", PAPER_DINOV2, PAPER_CLIP, LORA)
    message = str(err.value)
    assert (f"its DINOv2 has hidden size {dino.hidden_size} and {dino.num_hidden_layers} layers, the config 1536 "
            f"and 40: pass --models-dir") in message
    assert len(message.splitlines()) <= 1 + 1 + 3 * 9, message
    assert re.search(r"\.\.\. and \d+ more of kind 'missing key' \(\d+ in all\)", message)


@pytest.mark.parametrize("given, slot, diagnosis", [
    ("fusion", "global", "it looks like the fusion stream's checkpoint (dinov2_clip.pth), not the global stream's"),
    ("face", "fusion", "it looks like a global or face stream's checkpoint"),
])
def test_another_streams_checkpoint_is_recognised(reference_ensemble, given, slot, diagnosis):
    with pytest.raises(CheckpointError, match=re.escape(diagnosis)):
        _convert(reference_ensemble, _state(reference_ensemble, given), slot)


def test_a_state_dict_without_the_wrapper_prefix_says_so(reference_ensemble):
    state = {key.removeprefix("backbone."): value for key, value in _state(reference_ensemble, "global").items()}
    with pytest.raises(CheckpointError) as err:
        _convert(reference_ensemble, state, "global")
    assert f"none of its {len(state)} keys starts with backbone. or module.backbone." in str(err.value)
    assert len(str(err.value).splitlines()) <= 2 + 2 * 9  # the diagnosis, then two kinds of 8 lines and a count


def test_lora_rank_mismatch_is_one_line_naming_the_checkpoint_rank(reference_ensemble):
    """A wrong --lora-r mis-shapes every adapter alike: one line with the rank to use, not one per
    adapter (160 at the paper's size)."""
    dino, clip = _configs(reference_ensemble)
    state = _state(reference_ensemble, "global")
    adapters = sum(1 for k in state if k.endswith(".lora_A.default.weight"))
    with pytest.raises(CheckpointError) as err:
        convert_reference_state_dict(state, "global", dino, clip, LoraSettings(LORA_R + 1, LORA_ALPHA))
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1
    assert f"{adapters} LoRA adapter(s) have rank {LORA_R}, not --lora-r {LORA_R + 1}" in lines[0]
    assert f"build with --lora-r {LORA_R} " in lines[0]


def _first_key(state, suffix):
    return next(k for k in state if k.endswith(suffix))


def _with_gate_up(state, weights_in):
    gate, up = state[weights_in].chunk(2, dim=0)
    return {weights_in.replace(".weights_in.", ".gate_proj."): gate,
            weights_in.replace(".weights_in.", ".up_proj."): up}


@pytest.mark.parametrize("spelling", ["dataparallel", "unwrapped-lora", "transformers5", "gate-up"])
def test_two_spellings_of_one_weight_are_refused(reference_ensemble, spelling):
    """A key added beside the one the reference loads used to replace it silently (|dlogit| up to
    40); the reference's strict=False load would list it as unexpected and keep the genuine one."""
    state = _state(reference_ensemble, "global")
    query = _first_key(state, "encoder.layer.0.attention.attention.query.base_layer.weight")
    if spelling == "dataparallel":
        first = _first_key(state, "encoder.layer.1.norm2.weight")
        second = first.replace("backbone.", "module.backbone.", 1)
        added = {second: state[first] + 1}
    elif spelling == "unwrapped-lora":
        first, second = query, query.replace(".base_layer.", ".")
        added = {second: state[first] + 1}
    elif spelling == "transformers5":
        first, second = query, query.replace(".attention.attention.query.base_layer.", ".attention.q_proj.")
        added = {second: state[first] + 1}
    else:
        first = _first_key(state, "encoder.layer.0.mlp.weights_in.weight")
        added = _with_gate_up(state, first)
        second = next(iter(added))
    state.update(added)
    with pytest.raises(CheckpointError) as err:
        _convert(reference_ensemble, state, "global")
    message = str(err.value)
    assert "ambiguous keys: " in message
    line = next(line for line in message.splitlines() if "ambiguous keys" in line)
    assert first in line and second in line


def test_lora_adapter_on_a_convolution_is_refused_by_name(reference_ensemble):
    state = _state(reference_ensemble, "global")
    conv = _first_key(state, "embeddings.patch_embeddings.projection.weight")
    module = conv[: -len(".weight")]
    out_c, in_c, k, _ = state[conv].shape
    state[f"{module}.lora_A.default.weight"] = torch.zeros(LORA_R, in_c, k, k)
    state[f"{module}.lora_B.default.weight"] = torch.zeros(out_c, LORA_R, 1, 1)
    with pytest.raises(CheckpointError, match=r"LoRA adapter on embeddings\.patch_embeddings\.projection, whose "
                       r"weight is \(\d+, 3, \d+, \d+\): only adapters on linear layers"):
        _convert(reference_ensemble, state, "global")


def test_safetensors_checkpoint_reads_as_the_same_state_dict(reference_ensemble, tmp_path):
    from safetensors.torch import save_file

    state = _state(reference_ensemble)
    path = tmp_path / "dinov2_clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    expected = _convert(reference_ensemble, state)
    converted = _convert(reference_ensemble, read_state_dict(path))
    assert converted.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(converted[key], expected[key], rtol=0, atol=0)


def _base_model_p_fake(reference: ReferenceDinoV2, pixels: torch.Tensor) -> torch.Tensor:
    """The un-adapted backbone: peft's base model with its adapters disabled."""
    with torch.no_grad(), reference.vision_model.disable_adapter():
        pooled = reference.vision_model(pixel_values=pixels).pooler_output
        return torch.softmax(reference.last_layer(pooled), dim=1)[:, 1]


def test_lora_zero_b_gives_the_base_model_and_nonzero_b_changes_it(tmp_path, photographs):
    dino_cfg, clip_cfg = tiny_dinov2_config(), tiny_clip_config()
    models = write_models_dir(tmp_path / "models", dino_cfg, clip_cfg)
    dino = load_dinov2_config(models)
    pixels = stream_batch(list(photographs.values()), "global")

    adapted = ReferenceDinoV2(dino_cfg, LORA_R, LORA_ALPHA, seed=3).eval()
    centre_head(adapted, 252)
    zeroed = copy.deepcopy(adapted)
    with torch.no_grad():
        for n, p in zeroed.named_parameters():
            if "lora_B" in n:
                p.zero_()
    base = _base_model_p_fake(adapted, pixels)
    for reference, should_equal_base in ((zeroed, True), (adapted, False)):
        module = build_stream("global", dino, None)
        state = convert_reference_state_dict(reference_state_dict(reference), "global", dino, None, LORA)
        module.load_state_dict(state, strict=True)
        with torch.no_grad():
            ours = torch.softmax(module(pixels), dim=1)[:, 1]
        gap = torch.max(torch.abs(ours - base)).item()
        if should_equal_base:
            assert gap <= 1e-6
        else:
            assert gap > 1e-3
            torch.testing.assert_close(ours, reference_p := torch.softmax(reference(pixels), 1)[:, 1].detach(),
                                       rtol=0, atol=1e-5)
            assert reference_p.shape == ours.shape


def test_plain_mlp_dinov2_sizes_work(tmp_path, photographs):
    """dinov2-small/base/large use a GELU MLP (fc1/fc2), not SwiGLU: any size must work."""
    dino_cfg = tiny_dinov2_config(use_swiglu_ffn=False, hidden_size=48, num_attention_heads=3, num_hidden_layers=3)
    models = write_models_dir(tmp_path / "models", dino_cfg, tiny_clip_config())
    dino = load_dinov2_config(models)
    reference = ReferenceDinoV2(dino_cfg, LORA_R, LORA_ALPHA, seed=5).eval()
    centre_head(reference, 252)
    module = build_stream("face", dino, None)
    module.load_state_dict(convert_reference_state_dict(reference_state_dict(reference), "face", dino, None, LORA))
    pixels = stream_batch(list(photographs.values()), "face")
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(module(pixels), 1)[:, 1],
                                   torch.softmax(reference(pixels), 1)[:, 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_is_named_with_its_count(reference_ensemble, bad):
    state = _state(reference_ensemble, "global")
    key = next(k for k in state if k.endswith("encoder.layer.0.attention.attention.value.base_layer.weight"))
    state[key] = state[key].clone()
    state[key][0, :3] = bad
    with pytest.raises(CheckpointError) as err:
        _convert(reference_ensemble, state, "global")
    nan, inf = (3, 0) if bad != bad else (0, 3)
    assert f"{key}: {nan} NaN and {inf} infinite of {state[key].numel()} values" in str(err.value)
    assert "non-finite weights" in str(err.value)


def test_lora_merge_that_overflows_float32_is_refused(reference_ensemble):
    dino, clip = _configs(reference_ensemble)
    huge = LoraSettings(LORA_R, 1e300)
    with pytest.raises(CheckpointError, match=r"overflows float32 \(scale alpha/r = 2.5e\+299\)"):
        convert_reference_state_dict(_state(reference_ensemble, "global"), "global", dino, clip, huge)


def _check_and_load_errors(reference_ensemble, state, path, name="fusion"):
    """What the up-front check and the full load say of one saved state dict."""
    dino, clip = _configs(reference_ensemble)
    save_state_dict(state, path)
    said = []
    for read in (check_reference_checkpoint, load_reference_checkpoint):
        with pytest.raises(CheckpointError) as err:
            read(path, name, dino, clip, LORA)
        said.append(str(err.value))
    return said


def _renamed(state):
    key = next(k for k in state if k.endswith("encoder.layer.1.norm2.weight"))
    state[key.replace("norm2", "norm_2")] = state.pop(key)


def _misshaped_adapter(state):
    key = next(k for k in state if k.endswith("attention.output.dense.lora_B.default.weight"))
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])


def _other_rank(state):
    for key in [k for k in state if ".lora_A." in k]:
        state[key] = state[key][:LORA_R // 2]
    for key in [k for k in state if ".lora_B." in k]:
        state[key] = state[key][:, :LORA_R // 2]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", [_renamed, _misshaped_adapter, _other_rank, lambda state: state.clear()],
                         ids=["renamed", "misshaped-adapter", "other-rank", "empty"])
def test_the_up_front_check_says_what_the_full_load_says(reference_ensemble, tmp_path, damage, suffix):
    state = _state(reference_ensemble)
    damage(state)
    if not state and suffix == ".safetensors":
        state["unrelated"] = torch.zeros(1)  # safetensors keeps an empty dict; the point is a keyless backbone
    checked, loaded = _check_and_load_errors(reference_ensemble, state, tmp_path / f"dinov2_clip{suffix}")
    assert checked == loaded


def test_another_streams_checkpoint_is_found_by_the_up_front_check(reference_ensemble, tmp_path):
    checked, loaded = _check_and_load_errors(reference_ensemble, _state(reference_ensemble, "global"),
                                             tmp_path / "dinov2_clip.pth")
    assert checked == loaded and "looks like a global or face stream's checkpoint" in checked


def test_good_checkpoints_pass_the_up_front_check(reference_ensemble, tmp_path):
    dino, clip = _configs(reference_ensemble)
    for name in STREAM_SPECS:
        state = _state(reference_ensemble, name)
        for suffix in (".pth", ".legacy", ".safetensors"):
            check_reference_checkpoint(save_state_dict(state, tmp_path / f"{name}{suffix}"), name, dino, clip, LORA)


def test_non_finite_values_are_left_to_the_full_load(reference_ensemble, tmp_path):
    """The check reads no values, so NaN weights pass it and are named when the weights load."""
    state = _state(reference_ensemble, "global")
    key = next(k for k in state if k.endswith("layernorm.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    path = save_state_dict(state, tmp_path / "dinov2_252.pth")
    dino, clip = _configs(reference_ensemble)
    check_reference_checkpoint(path, "global", dino, clip, LORA)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_reference_checkpoint(path, "global", dino, clip, LORA)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_an_integer_weight_is_refused_by_name(reference_ensemble, tmp_path, dtype):
    """An integer tensor in a weight's place was converted to float32 and built without a word."""
    state = _state(reference_ensemble)
    key = next(k for k in state if k.endswith("fusion_head.3.weight"))
    state[key] = torch.ones_like(state[key], dtype=dtype)
    checked, loaded = _check_and_load_errors(reference_ensemble, state, tmp_path / "dinov2_clip.pth")
    assert checked == loaded
    assert f"non-floating-point key: {key} is {str(dtype).removeprefix('torch.')}, not the floating-point" in loaded


def test_integer_position_ids_and_half_precision_weights_are_accepted(reference_ensemble, tmp_path):
    state = {k: v.to(torch.float16) for k, v in _state(reference_ensemble).items()}
    state["backbone.clip_model.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    dino, clip = _configs(reference_ensemble)
    path = save_state_dict(state, tmp_path / "dinov2_clip.pth")
    check_reference_checkpoint(path, "fusion", dino, clip, LORA)
    assert load_reference_checkpoint(path, "fusion", dino, clip, LORA)["head.0.weight"].dtype == torch.float32

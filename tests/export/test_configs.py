"""Backbone configs: read as transformers writes them, and refused with the field named when a
value could not describe a network."""

from __future__ import annotations

import json

import pytest
from transformers import CLIPConfig, CLIPVisionConfig, Dinov2Config

from dfd.export.configs import (
    CLIP_DIRNAME,
    DINOV2_DIRNAME,
    ConfigError,
    load_clip_config,
    load_dinov2_config,
)


def _write(models, dirname, config) -> None:
    (models / dirname).mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(models / dirname / "config.json"))


def test_transformers_configs_are_read_field_for_field(tmp_path):
    dino = Dinov2Config(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=4, patch_size=14,
                        image_size=98, layer_norm_eps=1e-5, use_swiglu_ffn=True)
    _write(tmp_path, DINOV2_DIRNAME, dino)
    ours = load_dinov2_config(tmp_path)
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size",
                 "image_size", "layer_norm_eps", "hidden_act", "use_swiglu_ffn", "qkv_bias", "num_channels"):
        assert getattr(ours, name) == getattr(dino, name), name
    assert isinstance(ours.mlp_ratio, float)


@pytest.mark.parametrize("full", [True, False])
def test_clip_vision_config_alone_or_inside_a_full_clip_config(tmp_path, full):
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              patch_size=14, image_size=28)
    _write(tmp_path, CLIP_DIRNAME, CLIPConfig(vision_config=vision.to_dict()) if full else vision)
    ours = load_clip_config(tmp_path)
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "image_size", "layer_norm_eps", "hidden_act"):
        assert getattr(ours, name) == getattr(vision, name), name


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_size", "96", 'hidden_size must be a positive integer, got "96"'),
    ("hidden_size", -4, "hidden_size must be a positive integer, got -4"),
    ("num_attention_heads", 0, "num_attention_heads must be a positive integer, got 0"),
    ("num_hidden_layers", 2.5, "num_hidden_layers must be a positive integer, got 2.5"),
    ("patch_size", True, "patch_size must be a positive integer, got true"),
    ("mlp_ratio", float("nan"), "mlp_ratio must be a positive number, got NaN"),
    ("layer_norm_eps", -1e-6, "layer_norm_eps must be a positive number, got -1e-06"),
    ("use_swiglu_ffn", "yes", 'use_swiglu_ffn must be true or false, got "yes"'),
    ("hidden_act", None, "hidden_act must be a string, got null"),
    ("num_channels", 1, "num_channels is 1; the streams take RGB images (3)"),
    ("num_attention_heads", 5, "hidden_size 96 is not divisible by num_attention_heads 5"),
    ("image_size", 10, "image_size 10 is smaller than patch_size 14"),
])
def test_bad_dinov2_field_is_named(tmp_path, field, value, message):
    _write(tmp_path, DINOV2_DIRNAME, Dinov2Config(hidden_size=96, num_attention_heads=4))
    path = tmp_path / DINOV2_DIRNAME / "config.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load_dinov2_config(tmp_path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize(("data", "message"), [
    ({"vision_config": {"intermediate_size": 0}}, "intermediate_size must be a positive integer, got 0"),
    ({"image_size": 30, "patch_size": 14}, "image_size is not a multiple of patch_size"),
    ({"hidden_act": "relu"}, "unsupported hidden_act 'relu'"),
    # a vision_config that is no object was searched as a string: ViT-B/32's defaults, silently
    ({"vision_config": "hidden_size 1024"}, 'vision_config: expected a JSON object, got "hidden_size 1024"'),
    ({"vision_config": [1]}, "vision_config: expected a JSON object, got \\[1\\]"),
])
def test_bad_clip_field_is_named(tmp_path, data, message):
    path = tmp_path / CLIP_DIRNAME / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        load_clip_config(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    (None, "backbone config not found"),
    ("{", "cannot read backbone config"),
    ("[1, 2]", "is not a JSON object"),
    ("[" * 100_000, "nested too deeply"),
    (b"\xff\xfe{}", "cannot read backbone config"),
    ('{"model_type": "vit"}', "model_type is 'vit', expected 'dinov2'"),
])
def test_missing_unreadable_or_foreign_dinov2_config(tmp_path, text, message):
    if text is not None:
        (tmp_path / DINOV2_DIRNAME).mkdir()
        config = tmp_path / DINOV2_DIRNAME / "config.json"
        config.write_bytes(text) if isinstance(text, bytes) else config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_dinov2_config(tmp_path)

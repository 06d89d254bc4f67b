"""The build record verify and bench rebuild the fp32 reference from: read back as the build wrote
it, and every damaged field refused by name. A manifest rewritten with a fresh digest passes the
integrity check, so before this record was checked such edits gave tracebacks (TypeError,
AttributeError) from inside verify, bench and inspect."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import LORA_ALPHA, LORA_R, write_rebuilt_manifest

from dfd.calibration.calibset import SOURCE_PIXELS_KEY
from dfd.export.cli import main
from dfd.export.configs import LoraSettings, load_clip_config, load_dinov2_config
from dfd.export.recorded_build import RecordedCheckpoint, read_recorded_build
from dfd.runtime.manifest import EngineSetError, load_manifest, parse_manifest, sha256_file

CHECKPOINTS = {"global": "dinov2_252.pth", "face": "dinov2_252_crop.pth", "fusion": "dinov2_clip.pth"}


def test_the_record_holds_what_the_build_used(tiny_engine_set, reference_ensemble):
    build = read_recorded_build(load_manifest(tiny_engine_set))
    dino, clip = load_dinov2_config(reference_ensemble.models_dir), load_clip_config(reference_ensemble.models_dir)
    assert {name: (s.dino, s.clip) for name, s in build.streams.items()} == {
        "global": (dino, None), "face": (dino, None), "fusion": (dino, clip)}
    assert {name: s.checkpoint for name, s in build.streams.items()} == {
        name: RecordedCheckpoint(file, sha256_file(reference_ensemble.weights_dir / file))
        for name, file in CHECKPOINTS.items()}
    assert build.lora == LoraSettings(LORA_R, LORA_ALPHA) and build.seed == 0 and not build.random_weights
    assert build.weights_dir.resolve() == reference_ensemble.weights_dir.resolve()
    assert build.versions["torch"] == importlib.metadata.version("torch")
    assert not build.calibrated and build.calibration_images is None


def test_a_random_weights_set_is_verified_against_its_recorded_seed(tiny_random_engine_set, tmp_path):
    """The seed is the reference's weights here: verify rebuilt from any other seed fails on |dP|."""
    build = read_recorded_build(load_manifest(tiny_random_engine_set))
    assert build.random_weights and build.seed == 7 and build.weights_dir is None
    assert all(stream.checkpoint is None for stream in build.streams.values())
    result = CliRunner().invoke(main, ["verify", str(tiny_random_engine_set), "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == 0 and report["passed"], result.output
    assert report["reference"] == {"weights": "random", "seed": 7}


def _dino(m):
    return m["streams"]["global"]["architecture"]["dinov2"]


DAMAGE = {
    "build is not an object": (lambda m: m.update(build="x"), 'build must be a JSON object, got "x"'),
    "no architecture": (lambda m: m["streams"]["global"].pop("architecture"),
                        "the build record has no streams.global.architecture"),
    "architecture a string": (lambda m: m["streams"]["face"].update(architecture="x"),
                              'streams.face.architecture must be a JSON object, got "x"'),
    "an unknown config field": (lambda m: _dino(m).update(foo=1),
                                "streams.global.architecture.dinov2 has field(s) this dfd-export does not know: foo"),
    "a config field missing": (lambda m: _dino(m).pop("qkv_bias"), "streams.global.architecture.dinov2 lacks qkv_bias"),
    "a size that is a word": (lambda m: _dino(m).update(hidden_size="x"),
                              'streams.global.architecture.dinov2: hidden_size must be a positive integer, got "x"'),
    "an activation no tower has": (lambda m: _dino(m).update(hidden_act="relu"), "unsupported hidden_act 'relu'"),
    "CLIP on a DINOv2-only stream": (lambda m: m["streams"]["global"]["architecture"].update(clip={}),
                                     "streams.global.architecture must hold dinov2, got clip, dinov2"),
    "the fusion stream without CLIP": (lambda m: m["streams"]["fusion"]["architecture"].pop("clip"),
                                       "streams.fusion.architecture must hold clip and dinov2, got dinov2"),
    "LoRA rank a word": (lambda m: m["build"].update(lora={"r": "x", "alpha": 8.0}), 'build.lora must be {"r": a'),
    "LoRA alpha negative": (lambda m: m["build"]["lora"].update(alpha=-1), 'got {"r": 4, "alpha": -1}'),
    "seed beyond torch": (lambda m: m["build"].update(seed=2**70), "build.seed must be an integer torch can seed"),
    "seed true": (lambda m: m["build"].update(seed=True), "build.seed must be an integer torch can seed with, got true"),
    "no seed": (lambda m: m["build"].pop("seed"), "the build record has no build.seed"),
    "source a string": (lambda m: m["streams"]["face"].update(source="x"),
                        'streams.face.source must be a JSON object, got "x"'),
    "a checkpoint hash that is none": (lambda m: m["streams"]["face"]["source"]["checkpoint"].update(sha256="x"),
                                       'streams.face.source.checkpoint.sha256 must be 64 lowercase hex digits'),
    "a checkpoint outside the folder": (
        lambda m: m["streams"]["face"]["source"]["checkpoint"].update(file="../x.pth"),
        'streams.face.source.checkpoint.file must be a file name in the weights folder, got "../x.pth"'),
    "a checkpoint named ..": (lambda m: m["streams"]["face"]["source"]["checkpoint"].update(file=".."),
                              'streams.face.source.checkpoint.file must be a file name in the weights folder, got ".."'),
    "tool versions a string": (lambda m: m.update(tool_versions="x"), 'tool_versions must be a JSON object, got "x"'),
    "a tool version a number": (lambda m: m["tool_versions"].update(torch=2),
                                "tool_versions must map each tool to a version string"),
    "random weights with checkpoints": (lambda m: m.update(random_weights=True),
                                        "random_weights is true, yet the global, face, fusion stream(s) record a "
                                        "checkpoint"),
    "a stream without its checkpoint": (lambda m: m["streams"]["face"]["source"].update(checkpoint=None),
                                        "random_weights is false, yet the face stream(s) record no checkpoint"),
    "checkpoints without their folder": (lambda m: m["build"].update(weights_dir=None),
                                         "the streams record checkpoints but build.weights_dir names no folder"),
    "build not an object": (lambda m: m.update(build=None), "build must be a JSON object, got null"),
    "weights folder a number": (lambda m: m["build"].update(weights_dir=3),
                                "build.weights_dir must be a string or null, got 3"),
    "calibration a number": (lambda m: m.update(calibration=5), "calibration must be a JSON object, got 5"),
    "calibration images not hashes": (lambda m: m.update(calibration={SOURCE_PIXELS_KEY: "x"}),
                                      f"calibration.{SOURCE_PIXELS_KEY} must be a list of sha256 digests"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_record_is_refused_naming_the_field(tiny_engine_set, damage):
    edit, message = DAMAGE[damage]
    data = copy.deepcopy(load_manifest(tiny_engine_set, verify=False).raw)
    edit(data)
    manifest = parse_manifest(tiny_engine_set, data)  # the runtime's checks pass: these fields are not its
    with pytest.raises(EngineSetError) as raised:
        read_recorded_build(manifest)
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"{tiny_engine_set / 'manifest.json'}: ")
    assert str(raised.value).endswith("; rebuild the engine set with this dfd-export")


def _rewritten(tiny_engine_set, tmp_path, edit):
    folder = tmp_path / "set"
    shutil.copytree(tiny_engine_set, folder)
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    write_rebuilt_manifest(folder, data)
    return folder


@pytest.mark.parametrize("verb", [["verify"], ["bench", "--iterations", "1", "--warmup", "0", "--batch-sizes", "1"],
                                  ["bench", "--iterations", "1", "--warmup", "0", "--batch-sizes", "1",
                                   "--compare", "torch"]], ids=["verify", "bench", "bench --compare torch"])
def test_the_verbs_that_rebuild_the_reference_refuse_a_damaged_record(tiny_engine_set, tmp_path, verb):
    folder = _rewritten(tiny_engine_set, tmp_path, lambda m: _dino(m).update(hidden_size="x"))
    result = CliRunner().invoke(main, [verb[0], str(folder), *verb[1:]])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert 'streams.global.architecture.dinov2: hidden_size must be a positive integer, got "x"' in result.output


def test_inspect_shows_a_set_whose_tool_versions_are_damaged(tiny_engine_set, tmp_path):
    """inspect runs nothing from the build record, so it shows the set (it gave an AttributeError)."""
    folder = _rewritten(tiny_engine_set, tmp_path, lambda m: m.update(tool_versions="x"))
    result = CliRunner().invoke(main, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "by dfd-export ?" in result.output


def test_a_checkpoint_other_than_the_recorded_one_is_refused(tiny_engine_set, reference_ensemble, tmp_path):
    """Both verify and bench --compare torch load the reference through one function."""
    weights = tmp_path / "weights"
    shutil.copytree(reference_ensemble.weights_dir, weights)
    shutil.copy(weights / "dinov2_252_crop.pth", weights / "dinov2_252.pth")  # the facial stream's, same shapes
    for verb in (["verify"], ["bench", "--iterations", "1", "--warmup", "0", "--batch-sizes", "1", "--compare", "torch"]):
        result = CliRunner().invoke(main, [verb[0], str(tiny_engine_set), *verb[1:], "--weights-dir", str(weights)])
        assert result.exit_code == 1, result.output
        assert (f"{weights / 'dinov2_252.pth'} is not the checkpoint the global stream was built from (its sha256 "
                f"differs)") in result.output

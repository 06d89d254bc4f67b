"""``dfd-export build`` and ``inspect``: engine sets from reference checkpoints, and failures
that name their cause and leave nothing half-written."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import LORA_ALPHA, LORA_R
from dfd.runtime import atomic_files
from dfd.export import build as build_module
from dfd.export.build import BuildError, BuildRequest, build_engine_set
from dfd.export.checkpoint import LoraSettings
from dfd.export.checkpoint_files import read_state_dict
from dfd.export.cli import main
from dfd.export.mtcnn import default_mtcnn_weights_dir
from dfd.runtime.manifest import load_manifest, sha256_file


def _build(runner, reference_ensemble, out, *extra, weights_dir=None):
    args = ["build", "--weights-dir", str(weights_dir or reference_ensemble.weights_dir), "--models-dir",
            str(reference_ensemble.models_dir), "--out", str(out), "--lora-r", str(LORA_R),
            "--lora-alpha", str(LORA_ALPHA), *extra]
    return runner.invoke(main, args)


@pytest.fixture(scope="module")
def built(reference_ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "engines"
    result = _build(CliRunner(), reference_ensemble, out)
    assert result.exit_code == 0, result.output
    return out


def test_manifest_describes_every_file(built, reference_ensemble):
    manifest = load_manifest(built)  # verifies every sha256
    assert list(manifest.streams) == ["global", "face", "fusion"]
    assert manifest.vote_weights == {"global": 2.0, "face": 1.0, "fusion": 2.0}
    assert not manifest.random_weights
    sizes = {name: s.input_size for name, s in manifest.streams.items()}
    assert sizes == {"global": 252, "face": 252, "fusion": 224}
    for name, stream in manifest.streams.items():
        graph = stream.file("onnx")
        assert graph.path == f"{name}.fp32.onnx"
        assert graph.sha256 == sha256_file(built / graph.path)
        assert stream.precision == "fp32" and stream.backend == "onnxruntime"
    checkpoint = manifest.raw["streams"]["fusion"]["source"]["checkpoint"]
    assert checkpoint["sha256"] == sha256_file(reference_ensemble.weights_dir / "dinov2_clip.pth")
    assert manifest.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert {"torch", "onnx", "dfd-export"} <= set(manifest.raw["tool_versions"])
    localiser = manifest.face_detector
    roles = {f.role: f.path for f in localiser.files}
    assert roles == {"onnx": "face_detector.fp32.onnx", "mtcnn_pnet": "mtcnn_pnet.onnx",
                     "mtcnn_rnet": "mtcnn_rnet.onnx", "mtcnn_onet": "mtcnn_onet.onnx"}
    small = localiser.details["small_faces"]
    assert small["thresholds"] == [0.6, 0.7, 0.9]
    weights = default_mtcnn_weights_dir()
    assert [s["sha256"] for s in small["sources"]] == [sha256_file(weights / f"{n}.pt") for n in ("pnet", "rnet", "onet")]


def test_existing_output_is_kept_without_force(built, reference_ensemble):
    before = sha256_file(built / "manifest.json")
    result = _build(CliRunner(), reference_ensemble, built, "--streams", "global")
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert sha256_file(built / "manifest.json") == before


def test_force_replaces_an_engine_set_but_never_another_folder_or_file(reference_ensemble, tmp_path, monkeypatch):
    """``--force`` deletes the output before publishing: given a folder of other files (or a
    file) it used to delete them. The new set's files and the renames reach the disk before the
    old set is deleted (nothing was fsynced: a power loss just after a build could leave empty
    graphs and no old set)."""
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.txt").write_text("months of work")
    lone_file = tmp_path / "notes.txt"
    lone_file.write_text("keep me")
    for out, refusal in ((precious, "is not an engine set (it holds no dfd-export manifest.json), and --force "
                                    "replaces only engine sets"),
                         (lone_file, "is a file, not a folder; choose another")):
        result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector", "--force")
        assert result.exit_code == 1, result.output
        assert f"{out} {refusal}" in result.output
    assert (precious / "chapter1.txt").read_text() == "months of work" and lone_file.read_text() == "keep me"
    (precious / "manifest.json").write_text('{"name": "My PWA", "start_url": "/"}')  # a web app's, not ours
    result = _build(CliRunner(), reference_ensemble, precious, "--streams", "global", "--no-face-detector", "--force")
    assert result.exit_code == 1 and "is not an engine set" in result.output
    assert (precious / "chapter1.txt").read_text() == "months of work"

    engine_set = tmp_path / "set"
    events = []  # (what, name) in order
    real_fsync, real_sync_folder, real_rmtree = os.fsync, build_module.sync_folder, shutil.rmtree
    monkeypatch.setattr(atomic_files.os, "fsync",
                        lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(build_module, "sync_folder", lambda folder: events.append(("sync", str(folder)))
                        or real_sync_folder(folder))
    monkeypatch.setattr(build_module.shutil, "rmtree", lambda path, **kw: events.append(("delete", str(path)))
                        or real_rmtree(path, **kw))
    for streams in ("global", "fusion"):  # the second build replaces the first set
        events.clear()
        result = _build(CliRunner(), reference_ensemble, engine_set, "--streams", streams, "--no-face-detector", "--force")
        assert result.exit_code == 0, result.output
        published = events.index(("sync", str(tmp_path)))  # after the rename that publishes the set
        staged = {name.replace("/.set.partial", "/set") for what, name in events[:published] if what == "fsync"}
        assert {str(f) for f in engine_set.iterdir()} <= staged, events
    old_set_deleted = max(i for i, event in enumerate(events) if event == ("delete", str(tmp_path / ".set.replaced")))
    assert old_set_deleted > published  # the old set goes only once the new one is on disk
    assert load_manifest(engine_set).streams.keys() == {"fusion"}
    assert not (engine_set / "global.fp32.onnx").exists()


def test_force_keeps_an_engine_set_that_holds_other_files(reference_ensemble, tmp_path):
    engine_set = tmp_path / "set"
    assert _build(CliRunner(), reference_ensemble, engine_set, "--streams", "global", "--no-face-detector").exit_code == 0
    (engine_set / "results").mkdir()
    (engine_set / "results/bench.json").write_text("{}")
    before = sha256_file(engine_set / "manifest.json")
    result = _build(CliRunner(), reference_ensemble, engine_set, "--streams", "fusion", "--no-face-detector", "--force")
    assert result.exit_code == 1
    assert "holds files that are not part of its engine set (results/bench.json)" in result.output
    assert sha256_file(engine_set / "manifest.json") == before and (engine_set / "results/bench.json").exists()
    # a link to a folder and an empty folder are the user's too: both were deleted
    shutil.rmtree(engine_set / "results")
    (tmp_path / "precious").mkdir()
    (engine_set / "results").symlink_to(tmp_path / "precious", target_is_directory=True)
    (engine_set / "empty").mkdir()
    result = _build(CliRunner(), reference_ensemble, engine_set, "--streams", "fusion", "--no-face-detector", "--force")
    assert result.exit_code == 1 and "not part of its engine set (empty, results)" in result.output, result.output
    assert (engine_set / "results").is_symlink() and (engine_set / "empty").is_dir()


def test_a_build_beyond_this_machines_memory_is_an_error_not_a_traceback(reference_ensemble, tmp_path, monkeypatch):
    """--calib-count 10000000 failed minutes in with numpy's allocation traceback; a config.json of
    huge sizes with torch's "DefaultCPUAllocator: can't allocate memory" traceback."""
    from dfd.export.bench import environment

    monkeypatch.setattr(environment, "available_memory_bytes", lambda: 2**30)
    result = _build(CliRunner(), reference_ensemble, tmp_path / "int8", "--precision", "int8", "--calib-count", "2000")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("error: --calib-count 2000 makes calibration tensors of 4.0 GiB, more than the 1.0 GiB of memory "
            "available; lower it (the default is 256)") in result.output
    assert not (tmp_path / "int8").exists()

    def allocation_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 13194139533312 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(build_module, "load_stream_module", allocation_fails)
    result = _build(CliRunner(), reference_ensemble, tmp_path / "huge", "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: out of memory ([enforce fail" in result.output and "build on a machine with more memory" in result.output
    assert not (tmp_path / "huge").exists() and not (tmp_path / ".huge.partial").exists()


def test_files_that_appear_in_out_during_the_build_are_kept(reference_ensemble, tmp_path, monkeypatch):
    """The emptiness check ran once, before a build that takes minutes at the paper's size; a file
    put into --out meanwhile was deleted when the set was published."""
    out = tmp_path / "late"
    write_manifest = build_module.write_manifest

    def user_writes_meanwhile(folder, manifest):
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("user notes")
        write_manifest(folder, manifest)

    monkeypatch.setattr(build_module, "write_manifest", user_writes_meanwhile)
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1
    assert "already exists and is not empty" in result.output and "appeared while the build ran" in result.output
    assert (out / "notes.txt").read_text() == "user notes" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob(".late*"))


def test_an_interrupt_while_publishing_keeps_the_old_set(reference_ensemble, tmp_path, monkeypatch):
    """The old set was deleted before the new one was moved in; an interrupt between the two lost both."""
    out = tmp_path / "set"
    assert _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector").exit_code == 0
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    rename = Path.rename

    def interrupted(self, target):
        if self.name == ".set.partial":
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "fusion", "--no-face-detector", "--force")
    assert result.exit_code != 0
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".set*"))


def test_a_stop_while_the_old_set_is_deleted_is_taken_as_dealt_with(reference_ensemble, tmp_path, monkeypatch):
    """The new set is in place: the build finishes and exits 0, leaving the rest of the old set's
    deletion to the next build (the stop signal's record made it exit 130, "interrupted")."""
    out = tmp_path / "set"
    assert _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector").exit_code == 0
    rmtree = shutil.rmtree

    def signalled(path, *args, **kwargs):
        if Path(path).name.startswith(".set.replaced") and Path(path).exists():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never waited out
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", signalled)
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "fusion", "--no-face-detector", "--force")
    assert result.exit_code == 0, result.output
    assert load_manifest(out).streams.keys() == {"fusion"}


def test_the_current_folder_can_be_the_output(reference_ensemble, tmp_path, monkeypatch):
    """``--out .`` in an empty folder ran the whole build and then failed ('Invalid argument: .')."""
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.chdir(folder)
    result = _build(CliRunner(), reference_ensemble, ".", "--streams", "global", "--no-face-detector")
    assert result.exit_code == 0, result.output
    assert load_manifest(folder).streams.keys() == {"global"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging folder or lock left
    assert "note: the set replaced the folder this shell is in; run `cd .` to see its files" in result.output


def test_a_replaced_folder_keeps_its_permissions_and_a_mount_point_is_refused_up_front(
        reference_ensemble, tmp_path, monkeypatch):
    """The set replaces --out whole: a shared folder made 0750 or 2770 came back 0755, and a mount
    point (a Docker volume) failed with 'Device or resource busy' after the whole build."""
    out = tmp_path / "shared"
    out.mkdir()
    for mode, extra in ((0o750, ()), (0o2770, ("--force",))):
        os.chmod(out, mode)
        result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector", *extra)
        assert result.exit_code == 0, result.output
        assert oct(out.stat().st_mode & 0o7777) == oct(mode) and load_manifest(out).streams.keys() == {"global"}
    mount = tmp_path / "volume"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(build_module.os.path, "ismount", lambda path: Path(path) == mount or real_ismount(path))
    monkeypatch.setattr(build_module, "export_stream_onnx", lambda *a, **k: pytest.fail("the build started"))
    result = _build(CliRunner(), reference_ensemble, mount, "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1
    assert (f"{mount} is a mount point, which the build cannot replace (it stages the set beside the folder and "
            f"renames it into place, so the whole build would fail at its end); give a folder inside it, e.g. "
            f"{mount / 'engines'}") in result.output


def test_random_weights_warn_loudly(reference_ensemble, tmp_path):
    out = tmp_path / "random"
    result = CliRunner().invoke(main, ["build", "--models-dir", str(reference_ensemble.models_dir),
                                       "--out", str(out), "--streams", "face"])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output and "TensorRT engines, and --backend" not in result.output
    manifest = load_manifest(out)
    assert manifest.random_weights and list(manifest.streams) == ["face"]


def test_tensorrt_flags_typed_for_an_onnxruntime_build_are_named_as_unused(reference_ensemble, tmp_path):
    """The default backend is onnxruntime, so ``build --max-batch 32`` without ``--backend``
    used to build no engine and say nothing about the flag."""
    result = _build(CliRunner(), reference_ensemble, tmp_path / "e", "--streams", "global", "--no-face-detector",
                    "--max-batch", "32", "--version-compatible", "--opt-batch", "4")
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if "only shape TensorRT engines" in line)
    assert warning.startswith("WARNING: --opt-batch, --max-batch, --version-compatible only shape")
    assert "--min-batch" not in warning and "--backend tensorrt or auto" in warning
    assert "tensorrt" not in load_manifest(tmp_path / "e").raw


def test_calibration_flags_typed_for_an_fp32_build_are_named_and_source_folders_recorded_whole(
        reference_ensemble, tmp_path, monkeypatch):
    """fp32 has no calibration, so --calib-* there were ignored without a word; and the manifest
    records the folders absolute, so verify and bench find the checkpoints from any folder."""
    shutil.copytree(reference_ensemble.weights_dir, tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    result = _build(CliRunner(), reference_ensemble, "e", "--streams", "global", "--no-face-detector",
                    "--calib-count", "16", "--calib-method", "max", weights_dir="weights")
    assert result.exit_code == 0, result.output
    assert ("WARNING: --calib-count, --calib-method only shape the calibration of fp16 and int8 graphs, and an "
            "fp32 build has none") in result.output
    assert "--calib-dir" not in result.output
    assert load_manifest(tmp_path / "e").raw["build"]["weights_dir"] == str(tmp_path / "weights")


def test_a_partial_set_says_its_scores_are_not_the_ensemble(built, reference_ensemble, photographs, tmp_path):
    result = _build(CliRunner(), reference_ensemble, tmp_path / "e", "--streams", "global", "--no-face-detector")
    assert result.exit_code == 0, result.output
    image = tmp_path / "coffee.png"
    cv2.imwrite(str(image), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(main, ["detect", str(tmp_path / "e"), str(image), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert ("WARNING: this engine set has only the global stream(s); scores are their vote, not the paper's "
            "three-stream ensemble.") in result.stderr
    full = CliRunner().invoke(main, ["detect", str(built), str(image)])
    assert full.exit_code == 0 and "only the" not in full.stderr


def test_a_symbolic_link_as_out_is_refused_before_any_work(reference_ensemble, tmp_path):
    """A build replaces its folder whole; through a link it used to build every stream and then
    fail on "Cannot call rmtree on a symbolic link", losing the work."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    result = _build(CliRunner(), reference_ensemble, tmp_path / "link", "--force")
    assert result.exit_code == 1
    assert f"{tmp_path / 'link'} is a symbolic link (to {tmp_path / 'target'})" in result.output
    assert "build global" not in result.output and not list(tmp_path.glob(".*"))


def test_two_streams_from_identical_checkpoint_files_are_warned_about(reference_ensemble, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(reference_ensemble.weights_dir, weights)
    shutil.copyfile(weights / "dinov2_252.pth", weights / "dinov2_252_crop.pth")  # "filling" a missing file
    result = _build(CliRunner(), reference_ensemble, tmp_path / "e", "--streams", "global,face",
                    "--no-face-detector", weights_dir=weights)
    assert result.exit_code == 0, result.output
    assert "WARNING: the global and face streams were built from identical checkpoint files" in result.output


def test_a_calibration_that_fails_leaves_nothing_and_few_images_are_warned_about(reference_ensemble, photographs,
                                                                                  tmp_path, monkeypatch):
    """... and a relative --calib-dir is recorded (and named) absolute, as --weights-dir is."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _build(CliRunner(), reference_ensemble, tmp_path / "i8", "--precision", "int8", "--calib-dir",
                    str(empty), "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1 and f"no images under {empty}" in result.output
    assert not list(tmp_path.glob(".*"))  # neither the staging folder nor the lock
    one = tmp_path / "one"
    one.mkdir()
    cv2.imwrite(str(one / "coffee.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    monkeypatch.chdir(tmp_path)
    result = _build(CliRunner(), reference_ensemble, tmp_path / "f16", "--precision", "fp16", "--calib-dir",
                    "one", "--calib-count", "4", "--calib-cache", str(tmp_path / "cache"), "--streams", "global",
                    "--no-face-detector")
    assert result.exit_code == 0, result.output
    assert ("WARNING: the calibration set draws its 4 slots from only 1 distinct photograph(s) of the 1 image(s) in "
            f"{one}") in result.output
    assert load_manifest(tmp_path / "f16").raw["calibration"]["source"] == str(one)


def test_a_full_disk_names_where_the_build_was_writing(reference_ensemble, tmp_path, monkeypatch):
    """onnx.save's write error names no file: the build said only "No space left on device", and a
    user could not tell --out from /tmp or the calibration cache."""
    def full_disk(module, path, *args):
        path.write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(build_module, "export_stream_onnx", full_disk)
    result = _build(CliRunner(), reference_ensemble, tmp_path / "set", "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1
    assert (f"error: No space left on device while writing the engine set's files in {tmp_path} (staged in "
            f".set.partial, now removed)") in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_build_leaves_nothing_behind(reference_ensemble, tmp_path):
    """SIGTERM (kill, a cancelled CI job, docker stop) mid-build removes the staging folder and the
    lock as Ctrl-C does; they were left on disk (gigabytes at paper size). Sent again if the build
    runs on for 30 s: a signal that lands in a finaliser is only printed by Python."""
    out = tmp_path / "e"
    build = subprocess.Popen(
        [sys.executable, "-m", "dfd.export.cli", "build", "--weights-dir", str(reference_ensemble.weights_dir),
         "--models-dir", str(reference_ensemble.models_dir), "--out", str(out), "--lora-r", str(LORA_R),
         "--lora-alpha", str(LORA_ALPHA)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / ".e.partial"
    deadline = time.monotonic() + 300
    while build.poll() is None and not list(staging.glob("*.onnx")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert build.poll() is None, "the build ended before its first stream was written"
    while build.poll() is None and time.monotonic() < deadline:
        build.send_signal(signal.SIGTERM)
        try:
            build.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    _, stderr = build.communicate(timeout=60)
    assert build.returncode == 130 and "error: interrupted" in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_missing_checkpoint_is_named_and_nothing_is_left(reference_ensemble, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(reference_ensemble.weights_dir, weights)
    (weights / "dinov2_252_crop.pth").unlink()
    out = tmp_path / "engines"
    result = CliRunner().invoke(main, ["build", "--weights-dir", str(weights), "--models-dir",
                                       str(reference_ensemble.models_dir), "--out", str(out)])
    assert result.exit_code == 1
    assert "dinov2_252_crop.pth" in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_a_safetensors_checkpoint_builds_the_same_graph(reference_ensemble, tmp_path):
    """dinov2_252.safetensors stands in for a missing dinov2_252.pth: same weights, same graph bytes."""
    from safetensors.torch import save_file

    weights = tmp_path / "weights"
    weights.mkdir()
    state = read_state_dict(reference_ensemble.weights_dir / "dinov2_252.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights / "dinov2_252.safetensors"))
    runner = CliRunner()
    for out, where in (("pth", reference_ensemble.weights_dir), ("st", weights)):
        result = _build(runner, reference_ensemble, tmp_path / out, "--streams", "global", "--no-face-detector",
                        weights_dir=where)
        assert result.exit_code == 0, result.output
    recorded = load_manifest(tmp_path / "st").streams["global"].details["source"]["checkpoint"]
    assert recorded["file"] == "dinov2_252.safetensors"
    assert (tmp_path / "st/global.fp32.onnx").read_bytes() == (tmp_path / "pth/global.fp32.onnx").read_bytes()


def test_every_checkpoint_is_checked_before_calibration_and_export(reference_ensemble, tmp_path, monkeypatch):
    """A wrong face and fusion checkpoint are both named at once, before the calibration set or
    any export (the fusion one used to be found after the calibration and two streams' exports)."""
    weights = tmp_path / "weights"
    shutil.copytree(reference_ensemble.weights_dir, weights)
    shutil.copyfile(weights / "dinov2_252.pth", weights / "dinov2_clip.pth")
    state = read_state_dict(weights / "dinov2_252_crop.pth")
    key = next(k for k in state if k.endswith("last_layer.weight"))
    state[key] = state[key].to(torch.int64)
    torch.save(state, weights / "dinov2_252_crop.pth")

    def never(*args, **kwargs):
        raise AssertionError("the build's long work started")

    monkeypatch.setattr(build_module, "_calibration_set", never)
    monkeypatch.setattr(build_module, "export_stream_onnx", never)
    result = _build(CliRunner(), reference_ensemble, tmp_path / "engines", "--precision", "int8", weights_dir=weights)
    assert result.exit_code == 1, result.output
    assert "2 of the 3 checkpoints cannot be built:" in result.output
    assert f"non-floating-point key: {key} is int64" in result.output
    assert "dinov2_clip.pth does not match the fusion stream architecture" in result.output
    assert "looks like a global or face stream's checkpoint" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "engines").exists()


def test_corrupt_checkpoint_fails_cleanly(reference_ensemble, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(reference_ensemble.weights_dir, weights)
    (weights / "dinov2_252.pth").write_bytes(b"not a checkpoint")
    result = _build(CliRunner(), reference_ensemble, tmp_path / "engines", "--streams", "global", weights_dir=weights)
    assert result.exit_code == 1
    assert "dinov2_252.pth is not a PyTorch checkpoint" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "engines").exists()


def test_an_output_folder_under_a_file_is_one_clear_error(reference_ensemble, tmp_path):
    blocker = tmp_path / "engines"
    blocker.write_text("a file where the folder should be")
    result = _build(CliRunner(), reference_ensemble, blocker / "fp32", "--streams", "global")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot create the engine set folder {blocker / 'fp32'}" in result.output


def test_bad_streams_flag_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "x"), "--streams", "global,eyes"])
    assert result.exit_code == 1 and "eyes" in result.output


@pytest.mark.parametrize("r, alpha", [(0, 64.0), (32, 0.0), (32, float("nan")), (32, float("inf"))])
def test_lora_settings_that_would_merge_nonsense_are_refused(tmp_path, r, alpha):
    with pytest.raises(BuildError, match="LoRA rank must be >= 1 and alpha a positive number"):
        build_engine_set(BuildRequest(out_dir=tmp_path / "x", lora=LoraSettings(r, alpha)))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("seed", [str(2**64 - 2), str(-2**63 - 1), str(2**70)])
def test_a_seed_torch_cannot_take_is_refused_before_any_work(tmp_path, seed):
    """torch.manual_seed takes [-2**63, 2**64 - 1] and each stream adds its index: a larger --seed
    gave torch's "Overflow when unpacking long long" traceback after the output was prepared."""
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "x"), "--seed", seed])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"--seed must be within [{-2**63}, {2**64 - 3}] (what torch can seed with), got {seed}" in result.output
    assert not (tmp_path / "x").exists()


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(reference_ensemble, tmp_path):
    out = tmp_path / "engines"
    with open(tmp_path / ".engines.lock", "a") as held:  # what a running build holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector")
        assert result.exit_code == 1, result.output
        assert f"another dfd-export build is writing {out} (it holds {tmp_path / '.engines.lock'})" in result.output
        assert not out.exists() and not list(tmp_path.glob(".*partial"))
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector")
    assert result.exit_code == 0, result.output
    assert load_manifest(out).streams.keys() == {"global"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # lock file and staging gone


def test_inspect_prints_streams_and_refuses_tampering(built, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(built)])
    assert result.exit_code == 0, result.output
    assert "fusion    224x224" in result.output and "ok (manifest digest and sha256 of every file)" in result.output
    assert "faces        MediaPipe BlazeFace" in result.output
    assert "small faces  MTCNN" in result.output and "thresholds 0.6/0.7/0.9" in result.output
    raw = json.loads(runner.invoke(main, ["inspect", str(built), "--json"]).output)
    assert raw["format"] == "dfd-engine-set"
    # what detect's rows name, and a refused resume tells the user to look up here
    assert f"content      sha256 {raw['content_sha256']}  (detect rows' engine_set)\n" in result.output

    tampered = tmp_path / "tampered"
    shutil.copytree(built, tampered)
    with open(tampered / "face.fp32.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    result = runner.invoke(main, ["inspect", str(tampered)])
    assert result.exit_code == 3  # the verdict, as doctor's; 1 is a usage error
    assert "face.fp32.onnx does not match its sha256" in result.output

    edited = tmp_path / "edited"
    shutil.copytree(built, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["vote"]["weights"]["face"] = 5.0
    (edited / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = runner.invoke(main, ["inspect", str(edited)])
    assert result.exit_code == 3 and "manifest.json was edited after the build" in result.output


def _fp16_build_calibrated_on(reference_ensemble, folder, count: int, tmp_path) -> tuple[Path, str]:
    """A global-stream fp16 build whose calibration set draws ``count`` slots from ``folder``:
    the set's folder and what the build printed."""
    out = tmp_path / "fp16"
    result = _build(CliRunner(), reference_ensemble, out, "--precision", "fp16", "--calib-dir", str(folder),
                    "--calib-count", str(count), "--calib-cache", str(tmp_path / "cache"), "--streams", "global",
                    "--no-face-detector")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_unreadable_calibration_images_are_replaced_and_reported(reference_ensemble, photographs, tmp_path):
    folder = tmp_path / "calibration"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    out, output = _fp16_build_calibrated_on(reference_ensemble, folder, 3, tmp_path)
    assert "WARNING: 1 calibration image(s) could not be read; their slots hold other images of the set" in output
    # three files for three slots, but the corrupt one's slot repeats a photograph
    assert "draws its 3 slots from only 2 distinct photograph(s) of the 3 image(s)" in output
    [entry] = load_manifest(out).raw["calibration"]["unreadable_images"]
    assert entry["image"] == str(folder / "corrupt.jpg") and "is not an image OpenCV can decode" in entry["error"]
    # a damaged cache file is said on the build's WARNING lines, and rebuilt
    [cached] = (tmp_path / "cache").glob("calibset-*.npz")
    cached.write_bytes(b"garbage")
    result = _build(CliRunner(), reference_ensemble, tmp_path / "again", "--precision", "fp16", "--calib-dir",
                    str(folder), "--calib-count", "3", "--calib-cache", str(tmp_path / "cache"), "--streams", "global",
                    "--no-face-detector")
    assert result.exit_code == 0, result.output
    assert f"WARNING: ignoring unreadable calibration cache {cached} (" in result.output
    assert load_manifest(tmp_path / "again").raw["calibration"] == load_manifest(out).raw["calibration"]


def test_a_calibration_folder_says_what_the_set_is_not_drawn_from(reference_ensemble, photographs, tmp_path):
    """A folder of mostly HEIC files calibrated on its few PNGs without a word (detect names what
    it leaves out), and a link to the folder's parent drew the set from its sibling folders."""
    folder = tmp_path / "project" / "calibration"
    folder.mkdir(parents=True)
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    (folder / "holiday.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "parent").symlink_to("..")
    (tmp_path / "project" / "other").mkdir()
    cv2.imwrite(str(tmp_path / "project" / "other" / "chelsea.png"),
                cv2.cvtColor(photographs["chelsea"], cv2.COLOR_RGB2BGR))
    out, output = _fp16_build_calibrated_on(reference_ensemble, folder, 3, tmp_path)
    assert (f"WARNING: left out 1 file(s) in {folder} whose names do not end in an image suffix: holiday.heic"
            in output)
    assert (f"WARNING: did not follow 1 linked folder(s) in {folder} that lead to a folder holding it (their images "
            f"are outside the folder given): parent -> ..") in output
    assert "draws its 3 slots from only 2 distinct photograph(s) of the 2 image(s)" in output


def test_an_image_the_runtime_cannot_score_is_replaced_and_few_photographs_are_counted_as_read(
        reference_ensemble, photographs, tmp_path):
    """A readable 1x3000 strip (too elongated for the crop) stopped the build with an error that
    named no file; and a folder of one good image and seven corrupt ones calibrated every slot on
    the one photograph without the few-photographs warning, which counted the files found."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "strip.png"), np.zeros((1, 3000, 3), np.uint8))
    for index in range(7):
        (folder / f"corrupt{index}.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    out, output = _fp16_build_calibrated_on(reference_ensemble, folder, 8, tmp_path)
    assert "WARNING: 8 calibration image(s) could not be read" in output
    assert ("WARNING: the calibration set draws its 8 slots from only 1 distinct photograph(s) of the 9 image(s) "
            f"in {folder}") in output
    calibration = load_manifest(out).raw["calibration"]
    [strip] = [entry for entry in calibration["unreadable_images"] if entry["image"].endswith("strip.png")]
    assert strip["error"].startswith(f"{folder / 'strip.png'}: image 3000x1 is too elongated to score")
    assert len(calibration["source_pixels_sha256"]) == 1


def test_the_calibration_slots_are_recorded_warned_about_and_inspected(reference_ensemble, photographs, tmp_path):
    """A calibration photograph smaller than the crop is upscaled as detect would score it, but the
    build said nothing; which image filled each slot (and how it was degraded) was known only while
    the cache kept the set; and inspect did not show what a set was calibrated on."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "small.png"), np.full((90, 120, 3), 128, np.uint8))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    out, output = _fp16_build_calibrated_on(reference_ensemble, folder, 3, tmp_path)
    calibration = load_manifest(out).raw["calibration"]
    small = [slot for slot in calibration["slots"] if slot["image"] == str(folder / "small.png")]
    assert len(calibration["slots"]) == 3 and small
    assert {slot["image"] for slot in calibration["slots"]} <= {str(folder / "coffee.png"), str(folder / "small.png")}
    assert all(slot["notes"] == [f"global: {center_crop_note}"] for slot in small
               for center_crop_note in ["image 120x90 is smaller than 252 on a side: upscaled to 336x252 with bicubic "
                                        "interpolation (aspect ratio kept) before the 252x252 center crop; the "
                                        "reference would have substituted another image's prediction"])
    assert (f"WARNING: {len(small)} of the 3 calibration slot(s) hold an image preprocessed by a documented rule, "
            f"as detect would score it; the first, {folder / 'small.png'}: global: image 120x90 is smaller") in output
    assert sum(slot["degraded"] for slot in calibration["slots"]) == calibration["degraded_count"] == 2

    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert (f"calibration  3 slots from {len(calibration['source_pixels_sha256'])} distinct photograph(s) in "
            f"{folder}, 2 degraded (seed 0)") in shown.output
    assert (f"data sha256 {calibration['sha256']}; 1 unreadable image(s) replaced; {len(small)} slot(s) "
            "preprocessed by a documented rule (e.g. upscaled)") in shown.output


def test_inspect_wrong_folder(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 3 and "no manifest.json" in result.output


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_build_records_calibration_and_is_deterministic(reference_ensemble, tmp_path, precision):
    """Two builds from scratch (each draws and degrades its own calibration set: no shared cache)
    write byte-identical graphs, and so one content_sha256: a resume of detect's rows with the
    rebuilt set was refused as "another engine set" (the digest held the build's time). The two
    architectures (DINOv2, and DINOv2 + CLIP): the face stream is the global stream's network, and
    without a face detector its calibration input too."""
    hashes = []
    for attempt in range(2):
        out = tmp_path / f"{precision}-{attempt}"
        result = _build(CliRunner(), reference_ensemble, out, "--precision", precision, "--calib-count", "8",
                        "--calib-cache", str(tmp_path / f"cache-{attempt}"), "--no-face-detector",
                        "--streams", "global,fusion")
        assert result.exit_code == 0, result.output
        manifest = load_manifest(out)
        calibration = manifest.raw["calibration"]
        assert calibration["count"] == 8 and calibration["degraded_count"] == 4 and len(calibration["sha256"]) == 64
        for name, stream in manifest.streams.items():
            assert stream.precision == precision and stream.file("onnx").path == f"{name}.{precision}.onnx"
            assert manifest.raw["streams"][name]["precision_details"]["fp32_kept"]
        assert not (out / ".fp32").exists()
        hashes.append({n: s.file("onnx").sha256 for n, s in manifest.streams.items()})
        hashes[-1]["calibration"] = calibration["sha256"]
        hashes[-1]["content_sha256"] = manifest.raw["content_sha256"]
    assert hashes[0] == hashes[1]


def test_opsets_whose_attention_the_precision_passes_cannot_split_are_refused(reference_ensemble, tmp_path):
    """At opset 23..25 the fp16 graph ran each fused Attention, softmax included, in fp16 while
    the manifest said softmax stayed fp32; from 26 the build ended in a traceback."""
    from dfd.export.onnx_export import ExportError, export_stream_onnx

    for opset in ("23", "26"):
        result = _build(CliRunner(), reference_ensemble, tmp_path / "e", "--opset", opset)
        assert result.exit_code == 1 and "is not in the range 18<=x<=22" in result.output, result.output
    assert not (tmp_path / "e").exists()
    with pytest.raises(ExportError, match="opset must be within 18..22, got 23"):
        export_stream_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx", 4, opset=23)


def test_a_lock_whose_file_was_replaced_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """A build that opened the lock file just before the build holding it finished and removed
    it locked a file with no name, while a third build locked a new one: two builds in one folder."""

    out = tmp_path / "engines"
    lock_path = tmp_path / ".engines.lock"
    stale = tmp_path / "stale-lock"
    opened: list[Path] = []

    def open_before_the_holder_finished(path, mode="r", *args, **kwargs):
        if not opened:  # what this build opened is removed, and a third build locks a new file
            opened.append(path)
            handle = open(stale, mode)
            stale.unlink()
            return handle
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(build_module, "open", open_before_the_holder_finished, raising=False)
    with open(lock_path, "a") as third:
        fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BuildError, match="another dfd-export build is writing"):
            with build_module._exclusive_build(out):
                pass
    assert opened == [lock_path]


def test_an_interrupt_while_the_old_set_is_removed_still_publishes_the_new(reference_ensemble, tmp_path, monkeypatch):
    """Ctrl-C while the replaced set was deleted reported 'interrupted' (exit 130) with the new
    set already in place."""

    out = tmp_path / "set"
    assert _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector").exit_code == 0
    rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        if Path(path).name == ".set.replaced" and Path(path).exists():
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(build_module.shutil, "rmtree", interrupted)
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "fusion", "--no-face-detector", "--force")
    assert result.exit_code == 0, result.output
    assert load_manifest(out).streams.keys() == {"fusion"}


def test_a_set_left_aside_by_a_killed_build_is_restored(built, reference_ensemble, tmp_path):
    """Killed between the two renames of publishing, a build left no set at --out and the old one
    hidden at .NAME.replaced for good."""
    out = tmp_path / "engines"
    shutil.copytree(built, tmp_path / ".engines.replaced")
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1
    assert "restored the engine set an interrupted build had moved aside" in result.output
    assert f"{out} already exists and is not empty; pass --force" in result.output
    assert load_manifest(out).streams.keys() == load_manifest(built).streams.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]


def test_out_that_is_a_file_and_a_calibration_cache_inside_out_are_refused_up_front(reference_ensemble, tmp_path):
    """A file as --out was called 'not empty; pass --force' (which then failed too); a cache
    inside --out failed only after every stream was built."""
    target = tmp_path / "a-file"
    target.write_text("")
    result = _build(CliRunner(), reference_ensemble, target, "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1 and f"'--out': {target} is a file, not a folder; choose another" in result.output
    result = _build(CliRunner(), reference_ensemble, "", "--streams", "global", "--no-face-detector")
    assert result.exit_code == 1 and "'--out': is empty (an unset shell variable?)" in result.output
    out = tmp_path / "engines"
    result = _build(CliRunner(), reference_ensemble, out, "--streams", "global", "--no-face-detector",
                    "--precision", "int8", "--calib-cache", str(out / "cache"))
    assert result.exit_code == 1
    assert f"--calib-cache {out / 'cache'} is inside --out {out}, which the build replaces whole" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_flags_the_build_would_not_use_are_named(reference_ensemble, tmp_path):
    result = CliRunner().invoke(main, ["build", "--models-dir", str(reference_ensemble.models_dir), "--out",
                                       str(tmp_path / "random"), "--streams", "global", "--no-face-detector",
                                       "--lora-r", "8", "--precision", "fp16", "--calib-method", "max",
                                       "--calib-count", "4", "--max-pixels", "20000000"])
    assert result.exit_code == 0, result.output
    assert "WARNING: --lora-r describe the adapters of the checkpoints in --weights-dir" in result.output
    assert "WARNING: --calib-method only chooses INT8 activation ranges" in result.output
    assert "--max-pixels" not in result.output  # it decoded the calibration images
    assert load_manifest(tmp_path / "random").raw["calibration"]["max_pixels"] == 20_000_000
    result = _build(CliRunner(), reference_ensemble, tmp_path / "real", "--streams", "global", "--no-face-detector",
                    "--seed", "3", "--max-pixels", "1000")
    assert result.exit_code == 0, result.output
    assert "WARNING: --seed only initialises random streams" in result.output
    assert "WARNING: --max-pixels only shapes the calibration of fp16 and int8 graphs" in result.output
    assert "--lora-r describe" not in result.output


def test_inspect_without_hashes_still_checks_the_digest_and_the_files(built, tmp_path):
    """--no-verify skipped every check: an edited vote weight and a missing graph passed."""
    edited = tmp_path / "edited"
    shutil.copytree(built, edited)
    data = json.loads((edited / "manifest.json").read_text())
    data["vote"]["weights"]["face"] = 5
    (edited / "manifest.json").write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["inspect", str(edited), "--no-verify"])
    assert result.exit_code == 3 and "manifest.json was edited after the build" in result.output
    missing = tmp_path / "missing"
    shutil.copytree(built, missing)
    (missing / "global.fp32.onnx").unlink()
    result = CliRunner().invoke(main, ["inspect", str(missing), "--no-verify"])
    assert result.exit_code == 3 and "missing file global.fp32.onnx (global stream)" in result.output
    result = CliRunner().invoke(main, ["inspect", str(built), "--no-verify"])
    assert result.exit_code == 0
    assert "integrity    ok (manifest digest, and every file present with its size; sha256 not checked" in result.output

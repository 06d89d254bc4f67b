"""Reading checkpoint files: ``.pth`` (ZIP and legacy pickle) and safetensors give the same
tensors, names/shapes/dtypes can be read without the values, and a file that is no checkpoint
says what it is instead of torch's own message."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import save_state_dict
from dfd.export.checkpoint_files import CheckpointError, find_checkpoint, read_state_dict

STATE = {
    "backbone.vision_model.embeddings.cls_token": torch.linspace(-1, 1, 24).reshape(1, 1, 24),
    "backbone.last_layer.weight": torch.arange(48, dtype=torch.float16).reshape(2, 24),
    "backbone.last_layer_scale": torch.tensor([0.5, -2.0], dtype=torch.bfloat16),
    "backbone.clip_model.vision_model.embeddings.position_ids": torch.arange(5)[None],
}


@pytest.mark.parametrize("suffix", [".pth", ".legacy", ".safetensors"])
def test_every_format_reads_the_same_tensors_and_their_shapes_alone(tmp_path, suffix):
    path = save_state_dict(STATE, tmp_path / f"dinov2_clip{suffix}")
    read = read_state_dict(path)
    assert sorted(read) == sorted(STATE)
    for key, value in STATE.items():
        assert read[key].dtype == value.dtype and torch.equal(read[key], value), key
    meta = read_state_dict(path, shapes_only=True)
    assert sorted(meta) == sorted(STATE)  # safetensors stores its keys sorted
    for key, value in STATE.items():
        assert meta[key].is_meta and (meta[key].shape, meta[key].dtype) == (value.shape, value.dtype), key


def test_a_state_dict_under_a_state_dict_key_is_unwrapped(tmp_path):
    """Training scripts often save {"state_dict": ..., "epoch": ...}."""
    torch.save({"state_dict": STATE, "epoch": 3}, tmp_path / "wrapped.pth")
    assert sorted(read_state_dict(tmp_path / "wrapped.pth")) == sorted(STATE)


def test_the_reference_file_name_is_found_before_its_safetensors_twin(tmp_path):
    assert find_checkpoint(tmp_path, "fusion") == tmp_path / "dinov2_clip.pth"  # neither: for the message
    save_state_dict(STATE, tmp_path / "dinov2_clip.safetensors")
    assert find_checkpoint(tmp_path, "fusion") == tmp_path / "dinov2_clip.safetensors"
    save_state_dict(STATE, tmp_path / "dinov2_clip.pth")
    assert find_checkpoint(tmp_path, "fusion") == tmp_path / "dinov2_clip.pth"
    assert find_checkpoint(tmp_path, "global") == tmp_path / "dinov2_252.pth"


@pytest.mark.parametrize("shapes_only", [False, True])
def test_a_safetensors_file_cut_short_says_so_wherever_it_was_cut(tmp_path, shapes_only):
    """Cut inside its header, a download was called "not a PyTorch checkpoint"."""
    whole = save_state_dict(STATE, tmp_path / "whole.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(whole[:8], "little")
    for cut in (header_end // 2, header_end, len(whole) - 1):
        (tmp_path / "cut.safetensors").write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=r"cannot read safetensors checkpoint .*cut.safetensors "
                                                  r"\(corrupt or truncated\?\)"):
            read_state_dict(tmp_path / "cut.safetensors", shapes_only=shapes_only)


def test_a_checkpoint_path_that_is_not_a_file_says_what_it_is(tmp_path):
    (tmp_path / "folder.pth").mkdir()
    (tmp_path / "link.pth").symlink_to("nowhere.pth")
    os.mkfifo(tmp_path / "pipe.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a zip or a pickle")
    for name, what in [("folder.pth", "is a directory"), ("link.pth", "is a broken symbolic link"),
                       ("pipe.pth", "is not a regular file"), ("missing.pth", "does not exist"),
                       ("garbage.pth", "is not a PyTorch checkpoint")]:
        with pytest.raises(CheckpointError, match=what):
            read_state_dict(tmp_path / name)


def test_files_that_are_not_state_dicts_say_what_they_are(tmp_path):
    """What failed downloads and wrong saves leave behind, each named (torch's own messages for
    them were "101", an empty string, or advice to load with weights_only=False)."""
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "lfs.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 4620000000\n")
    (tmp_path / "page.pth").write_text("\n<!DOCTYPE html><html><body>Not Found</body></html>")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")  # a whole model, not its state_dict
    torch.save({3: torch.zeros(1)}, tmp_path / "intkey.pth")
    full = tmp_path / "full.pth"
    torch.save({"backbone.w": torch.zeros(1000)}, full)
    (tmp_path / "cut.pth").write_bytes(full.read_bytes()[:300])
    for name, what in [("empty.pth", r"is empty \(0 bytes\)"), ("lfs.pth", "is a Git LFS pointer"),
                       ("page.pth", "is an HTML or XML page"),
                       ("model.pth", r"holds pickled Python objects besides tensors .* save model.state_dict\(\)"),
                       ("intkey.pth", "1 key\\(s\\) are not parameter names, e.g. 3"),
                       ("cut.pth", r"cannot read checkpoint .*cut.pth \(corrupt or truncated\?\): \S")]:
        with pytest.raises(CheckpointError, match=what):
            read_state_dict(tmp_path / name)


def test_entries_that_are_not_tensors_are_named(tmp_path):
    """"is not a state dict of tensors" named neither the entry nor what it held, and a training
    checkpoint (weights under "model", beside the epoch) got no hint where its tensors are."""
    torch.save({**STATE, "epoch": 3}, tmp_path / "epoch.pth")
    torch.save({"model": STATE, "epoch": 3, "optimizer": {}}, tmp_path / "training.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    # a mapping that is empty, or holds more than tensors, is no state dict to point to
    torch.save({**STATE, "optimizer": {}}, tmp_path / "empty.pth")
    torch.save({**STATE, "extra": {"a": torch.zeros(1), "step": 3}}, tmp_path / "mixed.pth")
    for name, what in [("epoch.pth", r"1 of its 5 entries are not tensors, e.g. 'epoch' \(int\)$"),
                       ("empty.pth", r"1 of its 5 entries are not tensors, e.g. 'optimizer' \(dict\)$"),
                       ("mixed.pth", r"1 of its 5 entries are not tensors, e.g. 'extra' \(dict\)$"),
                       ("training.pth", r"3 of its 3 entries are not tensors, e.g. 'model' \(dict\); its tensors look "
                                        r"nested under 'model' \(a training checkpoint\?\): save that mapping alone, "
                                        r"torch.save\(checkpoint\['model'\], path\)"),
                       ("list.pth", "is not a state dict of tensors: it holds a list")]:
        with pytest.raises(CheckpointError, match=what):
            read_state_dict(tmp_path / name)


def test_a_safetensors_dtype_no_weight_has_is_named(tmp_path):
    """A dtype the format knows and no checkpoint weight has (an 8-bit exponent-only scale)."""
    header = json.dumps({"backbone.a": {"dtype": "F8_E8M0", "shape": [8], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) have a dtype no checkpoint weight has, e.g. "
                                              r"backbone.a \(F8_E8M0\); expected one of F64, F32"):
        read_state_dict(path, shapes_only=True)

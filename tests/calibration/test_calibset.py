"""Calibration sets: the tensors are the runtime preprocessing of the (degraded) images,
reproducible from the seed, and cached on disk under a hash of the inputs."""

from __future__ import annotations

import json
import logging
import errno
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfd.calibration import calibset
from dfd.calibration.calibset import CalibrationError, build_calibration_set, fingerprinted_sources
from dfd.calibration.degrade import PAPER_SPEC, DegradationSpec
from dfd.calibration.sources import sample_images
from dfd.runtime.images import array_sha256, decode_image
from dfd.runtime.preprocess import preprocess_face, preprocess_fusion, preprocess_global

GRAY_ONLY = DegradationSpec(op_probabilities=(("grayscale", 1.0),), recompress_p=0.0)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def synthetic(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus texture: content every stream crops differently."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> list[tuple[str, np.ndarray]]:
    # 200 high: below the 252 crop (upscale rule) and the 224 resize (cubic branch);
    # 224 high and wider: the fusion quirk rule
    shapes = [(300, 280), (260, 401), (200, 150), (224, 300)]
    return [(f"img{i}", synthetic(h, w, i)) for i, (h, w) in enumerate(shapes)]


def reference_global(rgb: np.ndarray) -> np.ndarray:
    """REFERENCE.md: 252 center crop with (h-252)//2, (w-252)//2, x/255, ImageNet normalisation."""
    top, left = (rgb.shape[0] - 252) // 2, (rgb.shape[1] - 252) // 2
    crop = rgb[top:top + 252, left:left + 252].astype(np.float32) / np.float32(255)
    return ((crop - MEAN) / STD).transpose(2, 0, 1)


def test_clean_tensors_are_the_runtime_preprocessing(images):
    sources = dict(images)
    calib = build_calibration_set(images, count=6, degrade_share=0.0, seed=1)
    assert set(calib.arrays) == {"global", "face", "fusion"}
    assert calib.arrays["global"].shape == (6, 3, 252, 252)
    assert calib.arrays["face"].shape == (6, 3, 252, 252)
    assert calib.arrays["fusion"].shape == (6, 3, 224, 224)
    assert all(array.dtype == np.float32 for array in calib.arrays.values())
    for slot, item in enumerate(calib.items):
        assert not item.degraded and item.ops == ()
        rgb = sources[item.name]
        assert np.array_equal(calib.arrays["global"][slot], preprocess_global(rgb, size=252).tensor)
        assert np.array_equal(calib.arrays["face"][slot], preprocess_face(rgb, size=252).tensor)
        assert np.array_equal(calib.arrays["fusion"][slot], preprocess_fusion(rgb, size=224).tensor)
        if min(rgb.shape[:2]) >= 252:
            assert np.allclose(calib.arrays["global"][slot], reference_global(rgb), atol=1e-6)
        if rgb.shape[0] > 224:
            resized = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)
            expected = ((resized.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
            assert np.allclose(calib.arrays["fusion"][slot], expected, atol=1e-6)


def test_degraded_tensors_are_preprocessing_of_degraded_images(images):
    sources = dict(images)
    calib = build_calibration_set(images, count=4, degrade_share=1.0, seed=2, spec=GRAY_ONLY,
                                  stream_sizes={"global": 252, "fusion": 224})
    assert set(calib.arrays) == {"global", "fusion"}
    assert calib.degraded_count == 4
    for slot, item in enumerate(calib.items):
        assert item.degraded and [name for name, _ in item.ops] == ["grayscale"]
        gray = cv2.cvtColor(cv2.cvtColor(sources[item.name], cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        assert np.array_equal(calib.arrays["global"][slot], preprocess_global(gray).tensor)
        assert np.array_equal(calib.arrays["fusion"][slot], preprocess_fusion(gray).tensor)


def test_share_and_determinism(images):
    first = build_calibration_set(images, count=8, degrade_share=0.5, seed=4, spec=PAPER_SPEC,
                                  stream_sizes={"global": 252})
    again = build_calibration_set(images, count=8, degrade_share=0.5, seed=4, spec=PAPER_SPEC,
                                  stream_sizes={"global": 252})
    other = build_calibration_set(images, count=8, degrade_share=0.5, seed=5, spec=PAPER_SPEC,
                                  stream_sizes={"global": 252})
    assert first.degraded_count == 4
    assert first.sha256 == again.sha256
    assert first.arrays["global"].tobytes() == again.arrays["global"].tobytes()
    assert first.items == again.items
    assert other.sha256 != first.sha256
    sources = dict(images)
    for slot, item in enumerate(first.items):
        clean = preprocess_global(sources[item.name]).tensor
        assert np.array_equal(first.arrays["global"][slot], clean) == (not item.ops)


def test_files_give_the_same_tensors_as_arrays(images, tmp_path):
    paths = []
    for name, rgb in images:
        path = tmp_path / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    from_files = build_calibration_set(paths, count=5, degrade_share=0.4, seed=3)
    from_arrays = build_calibration_set(images, count=5, degrade_share=0.4, seed=3)
    assert from_files.sha256 == from_arrays.sha256
    assert [item.name for item in from_files.items] == [str(tmp_path / f"{i.name}.png") for i in from_arrays.items]
    assert str(tmp_path.resolve()) in from_files.source


def test_cache_hit_returns_identical_arrays_without_recomputation(images, tmp_path, monkeypatch):
    arguments = dict(count=5, degrade_share=0.6, seed=7, cache_dir=tmp_path)
    built = build_calibration_set(images, **arguments)
    assert not built.from_cache
    cached_files = list(tmp_path.glob("calibset-*.npz"))
    assert [path.name for path in cached_files] == [f"calibset-{built.cache_key}.npz"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit recomputed the set")

    monkeypatch.setattr(calibset, "_compute", must_not_run)
    loaded = build_calibration_set(images, **arguments)
    assert loaded.from_cache
    assert loaded.sha256 == built.sha256 and loaded.items == built.items
    for stream, array in built.arrays.items():
        assert loaded.arrays[stream].dtype == np.float32
        assert loaded.arrays[stream].tobytes() == array.tobytes()
    assert loaded.manifest_entry() == built.manifest_entry()


def test_cache_key_follows_every_input(images, tmp_path):
    base = build_calibration_set(images, count=3, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                                 stream_sizes={"fusion": 224})
    used = {item.name for item in base.items}
    assert len(used) == 3
    unused_changed = [(name, rgb if name in used else rgb[::-1].copy()) for name, rgb in images]
    same = build_calibration_set(unused_changed, count=3, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                                 stream_sizes={"fusion": 224})
    assert same.from_cache and same.cache_key == base.cache_key, "an input the set is not made of is not part of it"
    changed_pixel = [(name, rgb.copy()) for name, rgb in images]
    next(rgb for name, rgb in changed_pixel if name in used)[0, 0, 0] ^= 1
    variants = [
        build_calibration_set(changed_pixel, count=3, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                              stream_sizes={"fusion": 224}),
        build_calibration_set(images, count=4, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                              stream_sizes={"fusion": 224}),
        build_calibration_set(images, count=3, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                              stream_sizes={"fusion": 224}, spec=GRAY_ONLY),
        build_calibration_set(images, count=3, degrade_share=0.5, seed=0, cache_dir=tmp_path,
                              stream_sizes={"fusion": 112}),
    ]
    keys = {base.cache_key} | {variant.cache_key for variant in variants}
    assert len(keys) == 5
    assert not any(variant.from_cache for variant in variants)


def test_only_the_sampled_files_of_a_folder_are_read(images, tmp_path, monkeypatch):
    """Keying a set of 3 on a folder of 40 files hashes those 3 files, not the folder, on a build
    and on a cache hit."""
    paths = []
    for index in range(40):
        name, rgb = images[index % len(images)]
        paths.append(tmp_path / f"{index:02d}-{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    reads = []
    real_read = calibset.read_image_file
    monkeypatch.setattr(calibset, "read_image_file", lambda path: reads.append(path) or real_read(path))
    arguments = dict(count=3, degrade_share=0.0, seed=1, cache_dir=tmp_path / "cache", stream_sizes={"global": 252})
    built = build_calibration_set(paths, **arguments)
    assert len(set(reads)) == 3 and {str(p) for p in reads} == {item.name for item in built.items}
    reads.clear()
    assert build_calibration_set(paths, **arguments).from_cache and len(reads) == 3


def test_corrupt_cache_is_rebuilt(images, tmp_path, caplog):
    built = build_calibration_set(images, count=2, degrade_share=0.0, seed=0, cache_dir=tmp_path,
                                  stream_sizes={"global": 252})
    cache_file = tmp_path / f"calibset-{built.cache_key}.npz"
    cache_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        rebuilt = build_calibration_set(images, count=2, degrade_share=0.0, seed=0,
                                        cache_dir=tmp_path, stream_sizes={"global": 252})
    assert not rebuilt.from_cache and rebuilt.sha256 == built.sha256
    assert "rebuilding" in caplog.text
    assert build_calibration_set(images, count=2, degrade_share=0.0, seed=0, cache_dir=tmp_path,
                                 stream_sizes={"global": 252}).from_cache


def test_manifest_entry(images):
    calib = build_calibration_set(images, count=4, degrade_share=0.5, seed=9,
                                  stream_sizes={"global": 252}, source="demo photographs")
    entry = calib.manifest_entry()
    assert entry["sha256"] == calib.sha256 and len(entry["sha256"]) == 64
    assert entry["count"] == 4 and entry["degraded_count"] == 2
    assert entry["degrade_share"] == 0.5 and entry["seed"] == 9
    assert entry["source"] == "demo photographs"
    assert entry["stream_sizes"] == {"global": 252}
    assert entry["degradation_spec"]["beta_a"] == 1.2


def test_the_manifest_entry_records_each_slots_image_degradations_and_preprocessing_notes(images, tmp_path):
    """Which images an fp16/INT8 graph was calibrated on, how each was degraded, and which met a
    preprocessing rule (img2 is 150x200: below every crop; img3 is 224 high and 300 wide: the
    fusion quirk) was known only while the cache kept the set; files are named by absolute path,
    as two files of one name in two sub-folders are two images."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [tmp_path / ("a" if index % 2 else "b") / "same.png" if index < 2 else tmp_path / f"{name}.png"
             for index, (name, _) in enumerate(images)]
    for path, (_, rgb) in zip(paths, images):
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    arguments = dict(count=8, degrade_share=0.0, seed=4, cache_dir=tmp_path / "cache")
    slots = build_calibration_set(paths, **arguments).manifest_entry()["slots"]
    assert [slot["image"] for slot in slots] == [str(paths[p]) for p in sample_images(range(4), 8, 4)]
    for slot in slots:
        assert slot["degraded"] is False and slot["degradations"] == []
        notes = slot.get("notes", [])
        if slot["image"] == str(paths[2]):
            assert [note.split(":")[0] for note in notes] == ["global", "face"]
            assert all("image 150x200 is smaller than 252 on a side: upscaled to 252x336" in n for n in notes)
        elif slot["image"] == str(paths[3]):
            assert [note.split(":")[0] for note in notes] == ["global", "face", "fusion"]
            assert notes[-1] == ("fusion: image is exactly 224 high but 300 wide: resized to 224x224 with area "
                                 "interpolation (the reference would not resize it and its batch would fail)")
        else:
            assert "notes" not in slot
    assert build_calibration_set(paths, **arguments).manifest_entry()["slots"] == slots  # from the cache

    degraded = build_calibration_set(images, count=6, degrade_share=0.5, seed=1)
    recorded = degraded.manifest_entry()["slots"]
    assert [slot["degraded"] for slot in recorded] == [item.degraded for item in degraded.items]
    assert sum(slot["degraded"] for slot in recorded) == 3
    assert [slot["degradations"] for slot in recorded] == [[list(op) for op in item.ops] for item in degraded.items]
    assert all(slot["degradations"] for slot in recorded if slot["degraded"])


@pytest.mark.parametrize("key, value", [
    ("items", [["img0", False]]), ("items", [["img0", "no", [], []]] * 2), ("items", [[1, False, [], []]] * 2),
    ("items", [["img0", False, [["jpeg"]], []]] * 2), ("items", "x"), ("items", None), ("items", []),
    ("items", [["img0", False, [], "abc"]] * 2), ("items", [["img0", False, [], [1]]] * 2),
    ("items", [["img0", True, [[1, 0.5]], []]] * 2), ("items", [["img0", True, [["jpeg", "x"]], []]] * 2),
    ("items", [["img0", False, [], []]] * 3),
    ("items", [["img0", False, {}, []]] * 2), ("items", [["img0", False, [], {"a": "b"}]] * 2),  # no lists
    ("unreadable", None), ("unreadable", []), (calibset.SOURCE_PIXELS_KEY, None), ("reserve_hashes", None)])
def test_a_cache_file_with_malformed_records_is_rebuilt(images, tmp_path, key, value):
    """The arrays' digest does not cover the records beside them (``None``: left out): a
    hand-edited one crashed the build (an unpacking ValueError, a KeyError) or reached the manifest."""
    arguments = dict(count=2, degrade_share=0.0, seed=0, cache_dir=tmp_path, stream_sizes={"global": 252})
    built = build_calibration_set(images, **arguments)
    cache_file = tmp_path / f"calibset-{built.cache_key}.npz"
    with np.load(cache_file) as stored:
        contents = {key: stored[key] for key in stored.files}
    meta = json.loads(str(contents["__meta__"]))
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    contents["__meta__"] = np.array(json.dumps(meta))
    with open(cache_file, "wb") as file:
        np.savez(file, **contents)
    warnings: list[str] = []  # the caller's warn (the CLI's WARNING lines), not the module's logger
    rebuilt = build_calibration_set(images, warn=warnings.append, **arguments)
    assert not rebuilt.from_cache and [w.split(" (")[0] for w in warnings] == [f"ignoring calibration cache {cache_file}"]
    assert rebuilt.manifest_entry() == built.manifest_entry()


def test_a_cache_file_of_other_inputs_is_rebuilt(images, tmp_path):
    """A cache file whose key is not the one it is stored under (copied, or renamed by hand)."""
    arguments = dict(count=2, degrade_share=0.0, seed=0, cache_dir=tmp_path, stream_sizes={"global": 252})
    built = build_calibration_set(images, **arguments)
    cache_file = tmp_path / f"calibset-{built.cache_key}.npz"
    other = build_calibration_set(images, **{**arguments, "seed": 1})
    os.replace(tmp_path / f"calibset-{other.cache_key}.npz", cache_file)
    warnings: list[str] = []
    rebuilt = build_calibration_set(images, warn=warnings.append, **arguments)
    assert not rebuilt.from_cache and rebuilt.sha256 == built.sha256
    assert warnings == [f"calibration cache {cache_file} does not match its inputs or content; rebuilding"]
    with np.load(cache_file) as stored:
        contents = {name: stored[name] for name in stored.files}
    contents["__meta__"] = np.array(json.dumps([]))  # a record that is no JSON object
    with open(cache_file, "wb") as file:
        np.savez(file, **contents)
    warnings.clear()
    assert not build_calibration_set(images, warn=warnings.append, **arguments).from_cache
    assert warnings == [f"calibration cache {cache_file} does not match its inputs or content; rebuilding"]


def test_manifest_entry_records_the_decoded_pixels_of_each_distinct_source_image(images, tmp_path):
    """``dfd-export verify`` tells its calibration images by these hashes of the decoded pixels: one
    photograph saved twice (PNG and BMP) counts once, an unreadable file not at all (its slots hold
    other images), and a cached set records the same."""
    paths = []
    for name, rgb in images:
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "again.bmp"), cv2.cvtColor(images[0][1], cv2.COLOR_RGB2BGR))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    inputs = [*paths, tmp_path / "again.bmp", tmp_path / "corrupt.jpg"]
    arguments = dict(count=12, degrade_share=0.5, seed=2, stream_sizes={"fusion": 32}, cache_dir=tmp_path / "cache")
    calib = build_calibration_set(inputs, **arguments)
    assert {Path(item.name).name for item in calib.items} == {path.name for path in inputs[:-1]}
    expected = sorted({array_sha256(decode_image(path).rgb) for path in paths})
    assert calib.manifest_entry()[calibset.SOURCE_PIXELS_KEY] == expected and len(expected) == len(images)
    assert expected == sorted(array_sha256(rgb) for _, rgb in images)  # file or array: same pixels
    cached = build_calibration_set(inputs, **arguments)
    assert cached.from_cache and cached.manifest_entry() == calib.manifest_entry()


def test_progress_bar_on_stderr_for_larger_sets(images, capsys):
    build_calibration_set(images, count=10, degrade_share=0.0, seed=0, stream_sizes={"fusion": 16})
    assert "calibration set" in capsys.readouterr().err
    build_calibration_set(images, count=3, degrade_share=0.0, seed=0, stream_sizes={"fusion": 16})
    assert "calibration set" not in capsys.readouterr().err


def test_bad_arguments_raise_calibration_errors(images, tmp_path):
    with pytest.raises(CalibrationError, match="no calibration images"):
        build_calibration_set([], count=1, degrade_share=0.0, seed=0)
    with pytest.raises(CalibrationError, match="at least 1"):
        build_calibration_set(images, count=0, degrade_share=0.0, seed=0)
    with pytest.raises(CalibrationError, match="degrade share"):
        build_calibration_set(images, count=1, degrade_share=1.5, seed=0)
    with pytest.raises(CalibrationError, match="stream sizes"):
        build_calibration_set(images, count=1, degrade_share=0.0, seed=0, stream_sizes={"clip": 224})
    with pytest.raises(CalibrationError, match="uint8 RGB"):
        build_calibration_set([("bad", np.zeros((4, 4), np.uint8))], count=1, degrade_share=0, seed=0)
    with pytest.raises(CalibrationError, match=r"none of the 1 calibration image\(s\) could be read; "
                                               r"the first: image file '.*missing.png' does not exist"):
        build_calibration_set([tmp_path / "missing.png"], count=1, degrade_share=0.0, seed=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match=r"none of the 2 calibration image\(s\) could be read; the first: "):
        build_calibration_set([broken, tmp_path / "missing.png"], count=3, degrade_share=0.0, seed=0)


def test_unreadable_files_are_replaced_reproducibly_and_reported(images, tmp_path):
    """A corrupt file, a broken link and a named pipe among the inputs: each slot they were
    sampled for holds another input's tensor, the set is the same on every build, and the
    manifest says which files and why; the named pipe is never opened (it would block)."""
    paths = []
    for name, rgb in images:
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (tmp_path / "gone.png").symlink_to("nowhere.png")
    os.mkfifo(tmp_path / "pipe.jpg")
    inputs = [*paths, tmp_path / "corrupt.jpg", tmp_path / "gone.png", tmp_path / "pipe.jpg"]
    arguments = dict(count=7, degrade_share=0.0, seed=4, stream_sizes={"global": 252})
    calib = build_calibration_set(inputs, **arguments, cache_dir=tmp_path / "cache")
    assert sorted(Path(image).name for image in calib.unreadable) == ["corrupt.jpg", "gone.png", "pipe.jpg"]
    assert "is a named pipe (FIFO)" in calib.unreadable[str(tmp_path / "pipe.jpg")]
    assert "broken symbolic link (to nowhere.png)" in calib.unreadable[str(tmp_path / "gone.png")]
    by_name = dict(images)
    for slot, item in enumerate(calib.items):  # 7 slots from 7 inputs: 3 replaced by readable ones
        expected = preprocess_global(by_name[Path(item.name).stem], size=252).tensor
        np.testing.assert_array_equal(calib.arrays["global"][slot], expected)
    assert len(calib.items) == 7 and {Path(item.name).stem for item in calib.items} == set(by_name)
    again = build_calibration_set(inputs, **arguments)
    assert again.sha256 == calib.sha256 and again.items == calib.items and again.unreadable == calib.unreadable
    cached = build_calibration_set(inputs, **arguments, cache_dir=tmp_path / "cache")
    assert cached.from_cache and cached.manifest_entry() == calib.manifest_entry()
    assert [entry["image"] for entry in calib.manifest_entry()["unreadable_images"]] == list(calib.unreadable)


def test_max_pixels_is_the_decoding_limit_of_the_calibration_images(images, tmp_path):
    """build --max-pixels: a JPEG over the limit is calibrated from its reduced decode, any other
    larger image is replaced as an unreadable one is; the limit keys the cache and is recorded."""
    (_, small), (_, large) = images[0], images[1]  # 280x300 (84,000 pixels) and 401x260 (104,260)
    inputs = [tmp_path / "small.png", tmp_path / "large.jpg", tmp_path / "large.png"]
    for path, rgb in zip(inputs, (small, large, large)):
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    arguments = dict(count=3, degrade_share=0.0, seed=0, stream_sizes={"fusion": 16}, cache_dir=tmp_path / "cache")
    calib = build_calibration_set(inputs, **arguments, max_pixels=90_000)
    assert list(calib.unreadable) == [str(inputs[2])] and "above the limit" in calib.unreadable[str(inputs[2])]
    reduced = decode_image(inputs[1], max_pixels=90_000)
    assert reduced.reduction == 2
    slots = [slot for slot, item in enumerate(calib.items) if Path(item.name).name == "large.jpg"]
    for slot in slots:
        np.testing.assert_array_equal(calib.arrays["fusion"][slot], preprocess_fusion(reduced.rgb, size=16).tensor)
    assert slots and calib.manifest_entry()["max_pixels"] == 90_000
    whole = build_calibration_set(inputs, **arguments)  # the default limit reads every image at full size
    assert whole.cache_key != calib.cache_key and not whole.from_cache and whole.unreadable == {}
    assert whole.manifest_entry()["max_pixels"] == 64_000_000
    cached = build_calibration_set(inputs, **arguments, max_pixels=90_000)
    assert cached.from_cache and cached.manifest_entry() == calib.manifest_entry()


def test_unreadable_files_are_named_by_absolute_path(images, tmp_path, monkeypatch):
    """The cache is keyed by absolute paths, but the report named a file as first given: the
    same set used from another directory named 'corrupt.jpg' relative to the first one, and
    'corrupt.jpg' and './corrupt.jpg' counted as two inputs."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    for name, rgb in images:
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    arguments = dict(count=4, degrade_share=0.0, seed=1, stream_sizes={"global": 252}, cache_dir=tmp_path / "c")
    monkeypatch.chdir(folder)
    first = build_calibration_set([Path(f"{name}.png") for name, _ in images] + [Path("corrupt.jpg")], **arguments)
    monkeypatch.chdir(tmp_path)
    relative = [Path("shoot") / f"{name}.png" for name, _ in images]
    cached = build_calibration_set(relative + [Path("shoot/corrupt.jpg")], **arguments)
    assert cached.from_cache and list(cached.unreadable) == list(first.unreadable) == [str(folder / "corrupt.jpg")]
    with pytest.raises(CalibrationError, match=r"none of the 1 calibration image\(s\)"):
        build_calibration_set([Path("shoot/corrupt.jpg"), Path("./shoot/corrupt.jpg")], count=2,
                              degrade_share=0.0, seed=0)


def test_a_changed_replacement_of_an_unsampled_file_invalidates_the_cache(images, tmp_path):
    """The key hashes only the sampled files; the file that replaced an unreadable sample is
    checked against the cache's record instead."""
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    inputs = [tmp_path / "corrupt.png"]
    for name, rgb in images:
        inputs.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(inputs[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    seed = next(seed for seed in range(100) if sample_images(range(len(inputs)), 1, seed) == [0])
    arguments = dict(count=1, degrade_share=0.0, seed=seed, stream_sizes={"global": 252}, cache_dir=tmp_path / "c")
    calib = build_calibration_set(inputs, **arguments)
    replacement = tmp_path / calib.items[0].name
    assert list(calib.unreadable) == [str(inputs[0])] and replacement != inputs[0]
    assert build_calibration_set(inputs, **arguments).from_cache
    cv2.imwrite(str(replacement), cv2.cvtColor(synthetic(240, 260, 99), cv2.COLOR_RGB2BGR))
    warnings: list[str] = []
    rebuilt = build_calibration_set(inputs, warn=warnings.append, **arguments)
    assert rebuilt.cache_key == calib.cache_key and not rebuilt.from_cache and rebuilt.sha256 != calib.sha256
    assert warnings == [f"an image that replaced an unreadable calibration image changed; rebuilding "
                        f"{tmp_path / 'c' / f'calibset-{calib.cache_key}.npz'}"]


# ------------------------------------------------------------------------------ cache robustness


@pytest.mark.parametrize("damage", ["empty", "truncated", "tail cut", "bit flip"])
def test_a_damaged_cache_file_is_rebuilt_not_fatal(images, tmp_path, damage):
    """Only pure garbage was handled: an emptied or truncated file (EOFError, BadZipFile) or a
    flipped byte (bad CRC) crashed every later build until someone found and deleted it."""
    arguments = dict(count=2, degrade_share=0.0, seed=0, cache_dir=tmp_path, stream_sizes={"global": 252})
    built = build_calibration_set(images, **arguments)
    cache_file = tmp_path / f"calibset-{built.cache_key}.npz"
    data = cache_file.read_bytes()
    damaged = {"empty": b"", "truncated": data[:len(data) // 2], "tail cut": data[:-10],
               "bit flip": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]}[damage]
    cache_file.write_bytes(damaged)
    warnings: list[str] = []
    rebuilt = build_calibration_set(images, warn=warnings.append, **arguments)
    assert not rebuilt.from_cache and rebuilt.sha256 == built.sha256
    assert len(warnings) == 1 and warnings[0].startswith(f"ignoring unreadable calibration cache {cache_file} (")
    assert build_calibration_set(images, **arguments).from_cache  # the rebuilt file replaced it


def test_a_cache_that_cannot_be_written_costs_only_the_cache(images, tmp_path, caplog, monkeypatch):
    """A cache folder that is a file, or a full disk, failed the build (after computing the set)
    and left a partial file of up to ~545 MB."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    arguments = dict(count=2, degrade_share=0.0, seed=0, stream_sizes={"global": 252})
    with caplog.at_level(logging.WARNING):
        calib = build_calibration_set(images, cache_dir=blocker, **arguments)
    assert calib.arrays["global"].shape == (2, 3, 252, 252) and "could not cache the calibration set" in caplog.text

    def disk_full(file, **arrays):
        file.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calibset.np, "savez", disk_full)
    cache = tmp_path / "cache"
    calib = build_calibration_set(images, cache_dir=cache, **arguments)
    assert calib.arrays["global"].shape == (2, 3, 252, 252)
    assert list(cache.iterdir()) == []  # no partial file left behind


def test_a_full_cache_disk_makes_room_by_dropping_the_least_recently_used_sets(images, tmp_path, monkeypatch):
    """Sets were pruned only after a save that succeeded: on a full disk the oldest set stayed
    forever and no new set was ever cached. The warning goes to the caller's ``warn`` (the CLI's
    WARNING lines), not to the logging module."""
    arguments = dict(count=2, degrade_share=0.0, cache_dir=tmp_path, stream_sizes={"fusion": 16})
    keys = [build_calibration_set(images, seed=seed, **arguments).cache_key for seed in range(2)]
    os.utime(tmp_path / f"calibset-{keys[0]}.npz", (0, 0))  # the least recently used
    savez = calibset.np.savez

    def room_for_two(file, **arrays):
        if len(list(tmp_path.glob("calibset-*.npz"))) >= 2:
            raise OSError(28, "No space left on device")
        savez(file, **arrays)

    monkeypatch.setattr(calibset.np, "savez", room_for_two)
    warnings: list[str] = []
    new = build_calibration_set(images, seed=2, warn=warnings.append, **arguments)
    assert warnings == []
    assert sorted(p.name for p in tmp_path.glob("calibset-*.npz")) == sorted(
        f"calibset-{key}.npz" for key in (keys[1], new.cache_key))

    def no_room(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calibset.np, "savez", no_room)
    build_calibration_set(images, seed=3, warn=warnings.append, **arguments)
    assert warnings == [f"could not cache the calibration set in {tmp_path} (No space left on device); the build goes "
                        f"on without caching it"]
    # an old set that cannot be deleted gives up the cache, not the build
    monkeypatch.setattr(calibset.np, "savez", savez)
    build_calibration_set(images, seed=4, **{**arguments, "cache_dir": tmp_path / "other"})
    assert len(list((tmp_path / "other").glob("calibset-*.npz"))) == 1
    monkeypatch.setattr(calibset.np, "savez", no_room)
    unlink = calibset.Path.unlink

    def kept_sets_undeletable(self, missing_ok=False):
        if self.name.startswith("calibset-"):
            raise PermissionError(13, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(calibset.Path, "unlink", kept_sets_undeletable)
    warnings.clear()
    assert build_calibration_set(images, seed=5, warn=warnings.append,
                                 **{**arguments, "cache_dir": tmp_path / "other"}).arrays["fusion"].shape[0] == 2
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


@pytest.mark.parametrize("error, evicts", [(errno.EDQUOT, True), (errno.EACCES, False), (errno.EROFS, False)],
                         ids=["quota", "permission", "read-only"])
def test_only_a_full_disk_or_quota_evicts_cached_sets(images, tmp_path, monkeypatch, error, evicts):
    """A quota reached is a full disk for this user; a folder that may not be written is no lack
    of room, and deleting the cached sets would not make the save succeed: they are kept."""
    arguments = dict(count=2, degrade_share=0.0, cache_dir=tmp_path, stream_sizes={"fusion": 16})
    keys = [build_calibration_set(images, seed=seed, **arguments).cache_key for seed in range(2)]
    os.utime(tmp_path / f"calibset-{keys[0]}.npz", (0, 0))  # the least recently used
    savez = calibset.np.savez

    def room_for_one(file, **arrays):
        if len(list(tmp_path.glob("calibset-*.npz"))) >= 2 or error != errno.EDQUOT:
            raise OSError(error, os.strerror(error))
        savez(file, **arrays)

    monkeypatch.setattr(calibset.np, "savez", room_for_one)
    warnings: list[str] = []
    new = build_calibration_set(images, seed=2, warn=warnings.append, **arguments)
    cached = sorted(p.name for p in tmp_path.glob("calibset-*.npz"))
    if evicts:
        assert warnings == [] and cached == sorted(f"calibset-{key}.npz" for key in (keys[1], new.cache_key))
    else:
        assert len(warnings) == 1 and os.strerror(error) in warnings[0]
        assert cached == sorted(f"calibset-{key}.npz" for key in keys)


def test_eviction_stops_at_a_set_that_cannot_be_deleted(images, tmp_path, monkeypatch):
    """No room can be made past a set that cannot be deleted (another user's, a read-only file
    system under a writable folder): the cache is given up, and the newer sets are kept."""
    arguments = dict(count=2, degrade_share=0.0, cache_dir=tmp_path, stream_sizes={"fusion": 16})
    keys = [build_calibration_set(images, seed=seed, **arguments).cache_key for seed in range(2)]
    oldest = tmp_path / f"calibset-{keys[0]}.npz"
    os.utime(oldest, (0, 0))

    def no_room(file, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    unlink = calibset.Path.unlink

    def oldest_undeletable(self, missing_ok=False):
        if self == oldest:
            raise PermissionError(errno.EACCES, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(calibset.np, "savez", no_room)
    monkeypatch.setattr(calibset.Path, "unlink", oldest_undeletable)
    warnings: list[str] = []
    build_calibration_set(images, seed=2, warn=warnings.append, **arguments)
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert sorted(p.name for p in tmp_path.glob("calibset-*.npz")) == sorted(f"calibset-{key}.npz" for key in keys)


def test_only_the_most_recently_used_sets_are_kept(images, tmp_path):
    arguments = dict(count=2, degrade_share=0.0, cache_dir=tmp_path, stream_sizes={"fusion": 16})
    keys = [build_calibration_set(images, seed=seed, **arguments).cache_key for seed in range(6)]
    first = tmp_path / f"calibset-{keys[0]}.npz"
    assert not first.exists()
    os.utime(tmp_path / f"calibset-{keys[2]}.npz", (0, 0))  # the oldest use of those left
    assert build_calibration_set(images, seed=3, **arguments).from_cache  # a hit counts as a use
    build_calibration_set(images, seed=6, **arguments)
    kept = sorted(p.name for p in tmp_path.glob("calibset-*.npz"))
    assert len(kept) == calibset.KEPT_CACHED_SETS and f"calibset-{keys[2]}.npz" not in kept
    assert f"calibset-{keys[3]}.npz" in kept
    # a save killed outright (SIGKILL, OOM) left its partial file for good; one being written now stays
    killed, running = tmp_path / f".calibset-{keys[0]}.npz.x1.partial", tmp_path / f".calibset-{keys[1]}.npz.x2.partial"
    killed.write_bytes(b"half a set")
    running.write_bytes(b"a set being written")
    os.utime(killed, (time.time() - 2 * calibset.STALE_PARTIAL_SECONDS,) * 2)
    build_calibration_set(images, seed=7, **arguments)
    assert not killed.exists() and running.exists()


def test_an_entry_whose_date_cannot_be_read_leaves_the_other_sets_pruned(images, tmp_path):
    """One dangling ``calibset-*.npz`` link (or a set another build removed between listing and
    dating) emptied the list of cached sets: nothing was pruned or evicted again."""
    (tmp_path / "calibset-dangling.npz").symlink_to(tmp_path / "nowhere")
    arguments = dict(count=2, degrade_share=0.0, cache_dir=tmp_path, stream_sizes={"fusion": 16})
    for seed in range(calibset.KEPT_CACHED_SETS + 3):
        build_calibration_set(images, seed=seed, **arguments)
    kept = [p for p in tmp_path.glob("calibset-*.npz") if p.exists()]
    assert len(kept) == calibset.KEPT_CACHED_SETS
    assert calibset._drop_first([tmp_path / "calibset-removed-meanwhile.npz"])  # already gone: room made


def test_the_cache_key_follows_the_opencv_and_numpy_versions_and_the_folder(images, tmp_path, monkeypatch):
    """Both decide the tensors (decoding, resizing, JPEG, the degradations' draws); and a moved
    folder is another set, whose report names the files where they are now."""
    arguments = dict(count=2, degrade_share=0.0, seed=0, stream_sizes={"fusion": 16})
    key = build_calibration_set(images, **arguments).cache_key
    monkeypatch.setattr(calibset.cv2, "__version__", "9.9.9")
    assert build_calibration_set(images, **arguments).cache_key != key
    monkeypatch.undo()
    monkeypatch.setattr(calibset.np, "__version__", "9.9.9")
    assert build_calibration_set(images, **arguments).cache_key != key
    monkeypatch.undo()
    for folder in ("v1", "v2"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "a.png"), images[0][1])
    keys = {build_calibration_set([tmp_path / folder / "a.png"], **arguments).cache_key for folder in ("v1", "v2")}
    assert len(keys) == 2


def test_a_jpeg_files_face_input_is_its_reference_reencode(images, tmp_path):
    """The runtime scores a JPEG with no usable face on its quality-95 re-encode (the reference's
    face-crop file); the calibration set took the decoded pixels as they were."""
    from dfd.runtime.preprocess import reencode_like_reference_face_file

    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(images[0][1], cv2.COLOR_RGB2BGR))
    rgb = decode_image(path).rgb
    calib = build_calibration_set([path], count=1, degrade_share=0.0, seed=0, stream_sizes={"face": 252, "global": 252})
    reencoded = reencode_like_reference_face_file(rgb, ".jpg")[0]
    assert not np.array_equal(reencoded, rgb)
    np.testing.assert_array_equal(calib.arrays["face"][0], preprocess_face(reencoded, size=252).tensor)
    np.testing.assert_array_equal(calib.arrays["global"][0], preprocess_global(rgb, size=252).tensor)


def test_arrays_of_one_name_each_have_their_pixels_recorded(images):
    """Inputs were told apart by name: of two arrays both called 'photo', one was missing from
    source_pixels_sha256, and verify undercounted its overlap with the calibration images."""
    twins = [("photo", images[0][1]), ("photo", images[1][1])]
    calib = build_calibration_set(twins, count=2, degrade_share=0.0, seed=0, stream_sizes={"fusion": 16})
    assert calib.source_pixels == sorted(array_sha256(rgb) for _, rgb in twins)


def test_the_cache_key_covers_every_module_that_decides_the_tensors(tmp_path, monkeypatch):
    """The key hashed five hand-picked modules and missed the JPEG header walk (which decides the
    reduced decode and the EXIF turn): a change there served a stale set. It also ignored whether
    OpenCV used IPP, whose cubic resize differs, so a cache shared between x86 and a Jetson mixed
    them. Now every module of both packages counts, and the IPP switch and the machine too."""
    import cv2

    import dfd.calibration.calibset as calibset

    names = {f"{path.parent.name}/{path.name}" for path in fingerprinted_sources()}
    assert {"runtime/image_headers.py", "runtime/images.py", "runtime/preprocess.py", "calibration/degrade.py",
            "calibration/sources.py", "calibration/calibset.py"} <= names
    assert len(names) == len(fingerprinted_sources())
    before = calibset._code_fingerprint()
    ipp = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(not ipp)
        assert calibset._code_fingerprint() != before
    finally:
        cv2.ipp.setUseIPP(ipp)
    assert calibset._code_fingerprint() == before
    monkeypatch.setattr(calibset.platform, "machine", lambda: "another-machine")
    assert calibset._code_fingerprint() != before

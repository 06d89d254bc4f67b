"""The measuring itself (:mod:`dfd.export.bench.measure`): which images a benchmark uses, how batches
walk through them, percentiles and the memory a batch needs."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import cv2
import pytest

from dfd.export.bench import BenchError
from dfd.export.bench import measure as bench_measure
from dfd.export.bench.measure import BenchImages, batch_memory_floor, bench_images, summarise


def test_summarise_percentiles():
    stats = summarise([0.001 * v for v in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"]) == pytest.approx((1.0, 100.0))


def test_batch_memory_floor_counts_cycled_images_and_stream_inputs():
    images = BenchImages(paths=[], source="", sizes=[(400, 300), (10, 20)], skipped=[])
    tensors = 3 * 4 * (252 * 252 + 224 * 224)
    assert batch_memory_floor(images, 1, [252, 224]) == 3 * 120_000 + tensors
    assert batch_memory_floor(images, 5, [252, 224]) == 3 * (3 * 120_000 + 2 * 200) + 5 * tensors


def test_a_folder_contributes_only_the_images_the_benchmark_uses(photographs, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "a0.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    for index in range(1, 6):
        cv2.imwrite(str(folder / f"a{index}.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    (folder / "z9.jpg").write_bytes(b"also broken, but never opened")
    images = bench_images(folder, tmp_path, count=3)
    assert [p.name for p in images.paths] == ["a1.png", "a2.png", "a3.png"]
    assert [Path(s["image"]).name for s in images.skipped] == ["a0.jpg"]  # z9.jpg was not reached
    assert images.source == f"folder {folder} (its first 3 readable images; 3 more not used)"
    whole = bench_images(folder, tmp_path, count=100)
    assert len(whole.paths) == 5 and whole.source == f"folder {folder}" and len(whole.skipped) == 2


def test_every_batch_size_walks_through_the_same_images():
    """The same first b images every iteration: batch 1 timed only the first image, and a
    face-free second image (the slow enhancement cascade) made batch 2 look 3x slower."""
    from dfd.export.bench.measure import _batch_of

    paths = [Path(name) for name in "abc"]
    assert [_batch_of(paths, 1, i) for i in range(4)] == [[Path("a")], [Path("b")], [Path("c")], [Path("a")]]
    assert [_batch_of(paths, 2, i) for i in range(3)] == [[Path("a"), Path("b")], [Path("c"), Path("a")],
                                                          [Path("b"), Path("c")]]


def test_temporary_images_that_cannot_be_written_are_named(tmp_path, monkeypatch):
    """cv2.imwrite's False was ignored on a full /tmp: the run failed later, saying the image did
    not exist."""
    def full_disk(path, rgb):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench_measure, "write_png", full_disk)
    with pytest.raises(BenchError, match=f"cannot write the benchmark's temporary image {re.escape(str(tmp_path))}/"
                                         f".*: No space left on device \\(set TMPDIR to a folder with room\\)"):
        bench_images(None, tmp_path)


def test_built_in_photographs_are_chosen_by_the_streams_input_sizes(tmp_path):
    """The rule was a literal 252: a set whose crop is larger timed photographs its reference
    pipeline cannot take."""
    for name in ("large", "small", "none"):
        (tmp_path / name).mkdir()
    images = bench_images(None, tmp_path / "large", count=100, stream_sizes={"global": 700, "fusion": 224})
    assert images.paths and all(min(w, h) >= 700 for w, h in images.sizes)
    assert [p.name for p in images.paths] == ["skimage_hubble_deep_field.png"]
    small = bench_images(None, tmp_path / "small", count=100, stream_sizes={"global": 252, "fusion": 224})
    assert len(small.paths) == 13 and all(min(w, h) >= 252 for w, h in small.sizes)
    with pytest.raises(BenchError, match=r"no built-in photograph fits the streams' input sizes "
                                         r"\{'global': 1001, 'fusion': 224\}; pass --images DIR"):
        bench_images(None, tmp_path / "none", count=100, stream_sizes={"global": 1001, "fusion": 224})

"""Image sources: folder listing, reproducible sampling and the built-in photographs."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfd.calibration.sources import (
    IMAGE_EXTENSIONS,
    ImageSourceError,
    NoImagesError,
    builtin_photographs,
    list_images,
    scan_image_folder,
    sample_images,
)


def write_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 5, 3), value, dtype=np.uint8))
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "A.JPG")
    write_image(tmp_path / "sub" / "c.webp")
    write_image(tmp_path / "sub" / "deeper" / "d.bmp")
    write_image(tmp_path / ".hidden" / "e.png")
    write_image(tmp_path / ".f.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_list_images_recursive_sorted_filtered(folder):
    names = [path.relative_to(folder).as_posix() for path in list_images(folder).images]
    assert names == ["A.JPG", "b.png", "sub/c.webp", "sub/deeper/d.bmp"]


def test_every_suffix_listed_is_one_opencv_decodes(tmp_path):
    """JPEG's other names (.jpe, .jfif) and PBM were left out of folders, though OpenCV reads them."""
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff",
                                     ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"}  # as the README lists them
    image = np.full((64, 80, 3), 100, dtype=np.uint8)  # JPEG 2000's resolution levels need 64 pixels or so
    for suffix in IMAGE_EXTENSIONS:
        # OpenCV writes .jpe and .jfif only as .jpg, and PBM and PGM only from one channel
        ok, encoded = cv2.imencode(".jpg" if suffix in (".jpe", ".jfif") else suffix,
                                   image[..., 0] if suffix in (".pbm", ".pgm") else image)
        assert ok, suffix
        (tmp_path / f"x{suffix}").write_bytes(encoded.tobytes())
    found = scan_image_folder(tmp_path)
    assert sorted(path.suffix for path in found.images) == sorted(IMAGE_EXTENSIONS) and not found.other_files
    for path in found.images:
        assert cv2.imread(str(path)).shape == (64, 80, 3), path.name


def test_list_images_flat(folder):
    assert [path.name for path in list_images(folder, recursive=False).images] == ["A.JPG", "b.png"]


def test_scan_names_the_visible_files_it_leaves_out(folder):
    (folder / "sub" / "clip.gif").write_bytes(b"GIF89a")
    found = scan_image_folder(folder)
    assert found.images == list_images(folder).images
    assert [path.relative_to(folder).as_posix() for path in found.other_files] == ["notes.txt", "sub/clip.gif"]
    assert [path.name for path in scan_image_folder(folder, recursive=False).other_files] == ["notes.txt"]


def test_flat_scan_names_the_sub_folders_it_does_not_enter(folder):
    """Hidden folders stay out of it, linked ones are named (a recursive scan follows them), and
    a recursive scan enters every visible one."""
    (folder / "empty").mkdir()
    (folder / "linked").symlink_to(folder / "sub")
    assert [path.name for path in scan_image_folder(folder, recursive=False).sub_folders] == ["empty", "linked", "sub"]
    assert scan_image_folder(folder).sub_folders == []


def test_a_recursive_scan_follows_linked_folders_once(folder, tmp_path_factory):
    """A recursive --calib-dir left out the images of a linked folder without a word. A folder
    reached by a link and for real keeps its real path, and each is listed once."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write_image(elsewhere / "e.png")
    (folder / "a_link").symlink_to(elsewhere)
    (folder / "0_alias").symlink_to(folder / "sub")  # sorts before sub: the real path still wins
    (folder / "sub" / "deeper" / "up").symlink_to("../..")
    found = scan_image_folder(folder)
    names = [path.relative_to(folder).as_posix() for path in found.images]
    assert names == ["A.JPG", "a_link/e.png", "b.png", "sub/c.webp", "sub/deeper/d.bmp"]
    # "up" leads to the folder itself: a loop, listed once, and no folder outside it left unfollowed
    assert found.enclosing_links == [] and found.links_not_followed(folder) is None


def test_a_link_to_a_folder_holding_the_one_given_is_not_followed_and_is_named(tmp_path):
    """A "parent -> .." link in a calibration folder of two photographs drew the set from 13
    photographs of a sibling folder, without a word (a link to the home folder walks all of it).
    A link to a folder elsewhere is still followed."""
    folder = tmp_path / "project" / "photos"
    write_image(folder / "a.png")
    write_image(folder / "sub" / "b.png")
    write_image(tmp_path / "project" / "sibling" / "s.png")
    write_image(tmp_path / "elsewhere" / "e.png")
    (folder / "sub" / "parent").symlink_to("../..")  # folder's parent, from a sub-folder
    (folder / "top").symlink_to(tmp_path)
    (folder / "more").symlink_to(tmp_path / "elsewhere")
    found = scan_image_folder(folder)
    assert [path.relative_to(folder).as_posix() for path in found.images] == ["a.png", "more/e.png", "sub/b.png"]
    assert [path.relative_to(folder).as_posix() for path in found.enclosing_links] == ["sub/parent", "top"]
    assert found.warnings(folder) == [
        f"did not follow 2 linked folder(s) in {folder} that lead to a folder holding it (their images are outside "
        f"the folder given): sub/parent -> ../.., top -> {tmp_path}"]
    assert scan_image_folder(folder, recursive=False).enclosing_links == []  # a flat scan follows no link
    (folder / "top").unlink()  # removed between the scan and the warning: the warning still comes
    assert found.warnings(folder)[0].endswith("sub/parent -> ../.., top -> (unreadable now: No such file or directory)")
    (folder / "top").write_text("a file now")  # replaced by a file: no link to read, and no crash either
    assert found.warnings(folder)[0].endswith("top -> (unreadable now: Invalid argument)")


def test_a_relative_folder_finds_the_links_that_lead_out_of_it(tmp_path, monkeypatch):
    """Given as a relative path ("photos"), the folder's parents are those of its real path: a
    "parent -> .." link in it leads out as it does when the path is absolute."""
    write_image(tmp_path / "photos" / "a.png")
    write_image(tmp_path / "sibling" / "s.png")
    (tmp_path / "photos" / "parent").symlink_to("..")
    monkeypatch.chdir(tmp_path)
    found = scan_image_folder(Path("photos"))
    assert [path.as_posix() for path in found.images] == ["photos/a.png"]
    assert [path.as_posix() for path in found.enclosing_links] == ["photos/parent"]


def test_scan_lists_entries_that_cannot_be_read_so_they_are_reported(folder):
    """A broken link or a named pipe with an image name is listed (its read fails with a message
    naming it); a link loop ends."""
    (folder / "gone.png").symlink_to("nowhere.png")
    os.mkfifo(folder / "sub" / "pipe.jpg")
    (folder / "sub" / "loop").symlink_to("..")
    (folder / "sub" / "stray").symlink_to("nowhere")
    found = scan_image_folder(folder)
    assert [path.relative_to(folder).as_posix() for path in found.images] == [
        "A.JPG", "b.png", "gone.png", "sub/c.webp", "sub/deeper/d.bmp", "sub/pipe.jpg"]
    assert [path.relative_to(folder).as_posix() for path in found.other_files] == ["notes.txt", "sub/stray"]


@pytest.fixture()
def unlistable(folder, make_unlistable):
    locked = folder / "sub" / "locked"
    write_image(locked / "x.png")
    make_unlistable(locked)
    return locked


def test_a_sub_folder_that_cannot_be_listed_is_reported_not_skipped(folder, unlistable):
    found = scan_image_folder(folder)
    assert [path.relative_to(folder).as_posix() for path in found.images] == [
        "A.JPG", "b.png", "sub/c.webp", "sub/deeper/d.bmp"]
    assert found.unreadable == [(unlistable, "Permission denied")]
    with pytest.raises(ImageSourceError, match=r"cannot list 1 sub-folder\(s\) of .*sub/locked: Permission denied"):
        list_images(folder)  # a calibration set or check would silently be short of those images
    with pytest.raises(ImageSourceError, match="cannot list image folder .*locked: Permission denied"):
        scan_image_folder(unlistable)


def test_list_images_errors(tmp_path):
    with pytest.raises(ImageSourceError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(ImageSourceError, match=r"no images under .*; it holds 1 other file\(s\), e.g. only.txt"):
        list_images(tmp_path)
    with pytest.raises(ImageSourceError, match="not a folder"):
        list_images(tmp_path / "only.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"")
    with pytest.raises(NoImagesError, match=r"no images directly in .*; it has 1 sub-folder\(s\) not looked "
                                            r"into, e.g. sub$") as raised:
        list_images(tmp_path, recursive=False)
    assert raised.value.sub_folders == [tmp_path / "sub"]
    # a folder of hidden images only: "no images" said nothing of the files that were skipped
    (tmp_path / "sub" / "a.png").rename(tmp_path / "sub" / ".a.png")
    (tmp_path / "sub" / ".notes").write_text("x")
    with pytest.raises(NoImagesError, match=r"no images under .*sub .*; 1 hidden image file\(s\) skipped \(a name "
                                            r"starting with '\.'\), e.g. \.a\.png$"):
        list_images(tmp_path / "sub")


def test_sample_without_replacement_is_reproducible():
    items = [f"img{i}" for i in range(20)]
    first = sample_images(items, 7, seed=3)
    assert first == sample_images(items, 7, seed=3)
    assert len(set(first)) == 7 and set(first) <= set(items)
    assert first != sample_images(items, 7, seed=4)


def test_sample_repeats_only_as_needed():
    items = ["a", "b", "c"]
    counts = Counter(sample_images(items, 8, seed=0))
    assert sum(counts.values()) == 8
    assert sorted(counts.values()) == [2, 3, 3]  # 8 = 2 x 3 + 2 distinct extras
    assert sorted(sample_images(items, 3, seed=9)) == items


def test_sample_errors():
    with pytest.raises(ImageSourceError, match="at least 1"):
        sample_images(["a"], 0, seed=0)
    with pytest.raises(ImageSourceError, match="empty"):
        sample_images([], 3, seed=0)
    with pytest.raises(ImageSourceError, match="seed"):
        sample_images(["a"], 1, seed=-1)


def test_builtin_photographs_are_the_shipped_files():
    import skimage
    from skimage import io

    photographs = dict(builtin_photographs())
    assert len(photographs) >= 5
    for name, rgb in photographs.items():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        assert min(rgb.shape[:2]) >= 252, name  # big enough for the global stream's crop
    shipped = Path(skimage.__file__).parent / "data"
    assert np.array_equal(photographs["skimage:astronaut.png"], io.imread(shipped / "astronaut.png"))
    camera = photographs["skimage:camera.png"]
    assert np.array_equal(camera[..., 0], io.imread(shipped / "camera.png"))
    assert np.array_equal(camera[..., 0], camera[..., 2])

"""The message helpers every verb's warnings and errors go through."""

from __future__ import annotations

import pytest

from dfd.runtime.errors import attempt_release, first_few, os_error_text, raise_held


def test_first_few_names_at_most_limit_then_counts_the_rest():
    names = [f"img{i}.jpg" for i in range(7)]
    assert first_few(names[:5]) == "img0.jpg, img1.jpg, img2.jpg, img3.jpg, img4.jpg"
    assert first_few(names) == "img0.jpg, img1.jpg, img2.jpg, img3.jpg, img4.jpg and 2 more"
    assert first_few(names, 3, separator="; ") == "img0.jpg; img1.jpg; img2.jpg and 4 more"
    assert first_few([]) == ""


def test_os_error_text_says_what_failed_on_which_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as under_a_file:
        (blocker / "sub").mkdir(parents=True)
    assert os_error_text(under_a_file.value) == f"Not a directory: {blocker / 'sub'}"
    with pytest.raises(FileExistsError) as over_a_file:
        blocker.mkdir()
    assert os_error_text(over_a_file.value) == f"{blocker} is a file, not a folder"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(FileExistsError) as over_a_broken_link:
        link.mkdir()
    assert os_error_text(over_a_broken_link.value) == f"{link} is a link to {tmp_path / 'gone'}, which does not exist"


def test_held_failures_raise_an_interrupt_first_then_the_first_error():
    """Every release runs; then a held Ctrl-C or SystemExit wins over any error (after a GPU fault
    the first failure is always a CUDA error), and among errors the first wins."""
    released: list[str] = []

    def release(name: str, exc: BaseException | None = None):
        def run():
            released.append(name)
            if exc is not None:
                raise exc
        return run

    first, later = RuntimeError("first"), RuntimeError("later")
    failures: list[BaseException] = []
    for name, exc in (("a", first), ("b", None), ("c", KeyboardInterrupt()), ("d", later)):
        attempt_release(failures, release(name, exc))
    assert released == ["a", "b", "c", "d"]
    with pytest.raises(KeyboardInterrupt):
        raise_held(failures)
    with pytest.raises(SystemExit):
        raise_held([first, SystemExit(130), KeyboardInterrupt()])
    with pytest.raises(RuntimeError, match="^first$"):
        raise_held([first, later])
    raise_held([])

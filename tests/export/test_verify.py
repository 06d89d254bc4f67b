"""``dfd-export verify``: the engine set against the fp32 PyTorch streams it was built from."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
from click.testing import CliRunner

from dfd.export.cli import main


def _images(tmp_path, photographs):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    return folder


def test_fp32_set_passes_and_reports(tiny_engine_set, photographs, tmp_path):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(_images(tmp_path, photographs)),
                                       "--degrade", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["precision"] == "fp32" and report["images"] == 2 * 6
    assert set(report["per_condition"]) == {"clean", "jpeg10", "blur3", "noise25", "compound_a", "compound_b"}
    assert report["vote_agreement"] == 1.0 and report["changed_votes"] == []
    for stream in ("global", "face", "fusion"):
        assert report["streams"][stream]["max_abs_dp"] <= 1e-4


def test_exceeded_threshold_exits_3(tiny_engine_set, photographs, tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(_images(tmp_path, photographs)),
                                       "--max-abs-dp", "0"])
    assert result.exit_code == 3 and "FAILED thresholds" in result.output


def test_unreadable_images_are_reported_and_the_others_verified(tiny_engine_set, photographs, tmp_path):
    folder = _images(tmp_path, photographs)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (folder / "gone.png").symlink_to("nowhere.png")
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(folder),
                                       "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["images"] == 2 and report["vote_agreement"] == 1.0
    assert [(Path(f["image"]).name, f["error"].split("' ")[-1]) for f in report["failed_images"]] == [
        ("corrupt.jpg", "is not an image OpenCV can decode (unrecognised format, or corrupt data)"),
        ("gone.png", "is a broken symbolic link (to nowhere.png)")]
    assert "could not read" in result.output and "gone.png" in result.output

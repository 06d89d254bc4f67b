"""``dfd-export verify``: the engine set against the fp32 PyTorch streams it was built from."""

from __future__ import annotations

import dataclasses
import errno
import importlib.metadata
import json
import math
import shutil
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import LORA_ALPHA, LORA_R, write_rebuilt_manifest
from onnx import numpy_helper

from dfd.calibration import sources
from dfd.calibration.calibset import SOURCE_PIXELS_KEY
from dfd.export import cli_types, verify
from dfd.export.cli import main
from dfd.export.recorded_build import read_recorded_build
from dfd.export.verify import (agreement_bound, beside_limit, clopper_pearson_lower_bound, judge, share_as_typed,
                               share_beside_limit, vote_steps, wilson_lower_bound)
from dfd.runtime.detector import Detector
from dfd.runtime.manifest import load_manifest, sha256_file


def _images(tmp_path, photographs):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    return folder


def _run_verify(engine_dir, tmp_path, *args, exit_code=0):
    """``verify ENGINE_DIR ARGS --json``: the CLI result (its exit status checked) and the report."""
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", str(engine_dir), *args, "--json", str(report_path)])
    assert result.exit_code == exit_code, result.output
    return result, json.loads(report_path.read_text())


def test_fp32_set_passes_and_reports(tiny_engine_set, photographs, tmp_path):
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(_images(tmp_path, photographs)),
                                 "--degrade")
    assert report["precision"] == "fp32" and report["images"] == 2 * 7
    assert set(report["per_condition"]) == {"clean", "jpeg10", "blur3", "noise25", "compound_a", "compound_b",
                                            "paper_compound"}
    assert report["vote_agreement"] == 1.0 and report["changed_votes"] == []
    for stream in ("global", "face", "fusion"):
        assert report["streams"][stream]["max_abs_dp"] <= 1e-4
    # the text's per-stream |dP| are pooled, and say so; each condition's line gives the |dP| its rules
    # judge (the text showed pooled figures only, rosier than the one that decided a failure)
    assert "(all conditions pooled; each is judged on its own, below)" in result.output
    noise = report["per_condition"]["noise25"]["streams"]
    worst_max = max(noise, key=lambda stream: noise[stream]["max_abs_dp"])
    worst_mean = max(noise, key=lambda stream: noise[stream]["mean_abs_dp"])
    assert (f"; max |dP| {noise[worst_max]['max_abs_dp']:.2e} ({worst_max}), mean |dP| up to "
            f"{noise[worst_mean]['mean_abs_dp']:.2e} ({worst_mean})") in next(
        line for line in result.output.splitlines() if line.startswith("  noise25 "))


def test_exceeded_threshold_exits_3_even_when_the_report_cannot_be_written(tiny_engine_set, photographs, tmp_path,
                                                                            monkeypatch):
    images = str(_images(tmp_path, photographs))
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", images, "--max-abs-dp", "0"])
    assert result.exit_code == 3 and "FAILED thresholds" in result.output

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_types, "write_atomically", full_disk)
    report = tmp_path / "report.json"
    for limit, exit_code, verdict in (("0", 3, "FAILED thresholds"), ("1", 1, "passed thresholds")):
        result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", images, "--max-abs-dp", limit,
                                           "--max-mean-dp", limit, "--json", str(report)])
        assert result.exit_code == exit_code, result.output  # the verdict wins over the lost report
        assert verdict in result.output and f"cannot write {report}: No space left on device" in result.output


def test_unreadable_images_are_reported_and_the_others_verified(tiny_engine_set, photographs, tmp_path):
    folder = _images(tmp_path, photographs)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (folder / "gone.png").symlink_to("nowhere.png")
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder))
    assert report["images"] == 2 and report["vote_agreement"] == 1.0
    assert [(Path(f["image"]).name, f["error"].split("' ")[-1]) for f in report["failed_images"]] == [
        ("corrupt.jpg", "is not an image OpenCV can decode (unrecognised format, or corrupt data)"),
        ("gone.png", "is a broken symbolic link (to nowhere.png)")]
    assert "left out " in result.output and "gone.png" in result.output
    assert report["passed"] and report["thresholds"]["unreadable_inputs"] == "left out"

    # a release gate: the same comparison fails the set when it rests on fewer images than given
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder), "--strict", exit_code=3)
    assert report["images"] == 2 and report["vote_agreement"] == 1.0
    assert not report["passed"] and report["thresholds"]["unreadable_inputs"] == "fail"
    assert report["failures"] == [f"2 input(s) could not be read or prepared (strict); the first, "
                                  f"{report['failed_images'][0]['image']}: {report['failed_images'][0]['error']}"]
    assert "FAILED thresholds" in result.output and "2 input(s) could not be read or prepared (strict)" in result.output


def test_images_not_decoded_plainly_are_named_and_the_report_reads_as_words(tiny_engine_set, photographs, tmp_path):
    """A JPEG that was 40 % grey fill, or one decoded reduced under --max-pixels, was verified
    without a word (detect and degrade note both); the thresholds were printed as a Python dict."""
    folder = _images(tmp_path, photographs)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(photographs["chelsea"], cv2.COLOR_RGB2BGR))
    (folder / "cut.jpg").write_bytes(data.tobytes()[:len(data) // 2])
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder))
    [cut] = report["decode_notes"]
    assert cut["image"] == str(folder / "cut.jpg") and len(cut["notes"]) == 1
    assert cut["notes"][0].startswith("JPEG data is truncated (no end-of-image marker after the image data): OpenCV "
                                      "decoded what was present and filled the rest with flat grey")
    assert (f"WARNING: 1 verified image(s) were not decoded plainly (truncated or corrupt data, a reduced decode, a "
            f"conversion; listed in decode_notes), so they are not the photographs they may seem; the first, "
            f"{folder / 'cut.jpg'}: JPEG data is truncated") in result.output
    assert report["passed"] and ("passed thresholds: max |dP| 0.0001, mean |dP| 0.0001, vote agreement >= 100% on "
                                 "each condition, a vote moves at most 0.1, non-finite probability: fail, unreadable "
                                 "inputs: left out") in result.output


def test_each_input_left_out_counts_once_and_a_locked_sub_folder_is_one_of_them(tiny_engine_set, photographs,
                                                                               tmp_path, make_unlistable):
    """A strip too elongated to crop was listed once per condition ("14 input(s)" for two strips
    under --degrade); a sub-folder that cannot be listed stopped the whole run, where detect reports
    it and goes on; files left out by their suffix were dropped without a word."""
    folder = tmp_path / "images"
    (folder / "locked").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "strip.png"), np.full((1, 2048, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "locked" / "coffee.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    (folder / "clip.gif").write_bytes(b"GIF89a")
    make_unlistable(folder / "locked")
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder), "--degrade")
    assert report["images"] == 7 and report["distinct_images"] == 1 and report["passed"]
    locked, strip = report["failed_images"]
    assert locked == {"image": str(folder / "locked"),
                      "error": "cannot list this folder (Permission denied); its images, if any, are left out"}
    assert strip["image"] == str(folder / "strip.png") and "too elongated" in strip["error"]
    assert strip["conditions"] == list(report["per_condition"]) and len(strip["conditions"]) == 7
    assert f"left out 1 file(s) in {folder} whose names do not end in an image suffix: clip.gif" in report["warnings"]
    assert any(w.startswith("2 input(s) could not be read or prepared") for w in report["warnings"])
    assert f"left out {folder / 'strip.png'} (under clean, jpeg10, " in result.output
    _, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder), "--strict", exit_code=3)
    assert report["failures"][-1].startswith(f"2 input(s) could not be read or prepared (strict); the first, "
                                             f"{folder / 'locked'}: cannot list this folder")


def test_an_edited_manifest_fails_its_integrity_check_before_verify_reads_it(tiny_engine_set, tmp_path):
    """verify read the build fields of a manifest it had not checked yet: "build": "x" gave an
    AttributeError traceback instead of the digest mismatch every other verb reports."""
    folder = tmp_path / "set"
    shutil.copytree(tiny_engine_set, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["build"] = "x"
    (folder / "manifest.json").write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["verify", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "manifest.json was edited after the build" in result.output


def test_no_readable_image_names_the_first_failure_and_a_bad_json_path_fails_first(tiny_engine_set, tmp_path,
                                                                                   monkeypatch):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    opened = []
    real_open = Detector.open
    monkeypatch.setattr(Detector, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(tmp_path)])
    assert result.exit_code == 1
    # the Detector is closed on the way out (verify_engine_set never closed it: GPU buffers on TensorRT)
    assert len(opened) == 1 and opened[0].closed
    assert "no image could be verified (1 could not be read; the first, " in result.output
    assert "corrupt.jpg' is not an image OpenCV can decode" in result.output
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the folder should be")
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--json", str(blocker / "r.json")])
    assert result.exit_code != 0 and f"cannot create the folder for {blocker / 'r.json'}" in result.output
    assert "vote agreement" not in result.output  # refused before the comparison, not after it


def test_a_folder_is_decoded_one_image_at_a_time(tiny_engine_set, photographs, tmp_path, monkeypatch):
    """Each file is decoded once, just before its conditions run, so a large folder is never held
    in memory at once (measured: 24 photographs of 12 MP, peak RSS 2.42 GB -> 1.63 GB)."""

    events = []
    decode, prepare = verify.decode_image, Detector.prepare
    monkeypatch.setattr(verify, "decode_image",
                        lambda path, **kw: events.append(f"decode {Path(path).name}") or decode(path, **kw))
    monkeypatch.setattr(Detector, "prepare", lambda self, image, label, **kw: events.append("prepare")
                        or prepare(self, image, label, **kw))
    report = verify.verify_engine_set(tiny_engine_set, _images(tmp_path, photographs), degrade=True)
    assert report.images == 2 * 7 and report.passed
    assert events == ["decode astronaut.png", *["prepare"] * 7, "decode coffee.png", *["prepare"] * 7]
    blur3 = report.per_condition["blur3"]
    assert (blur3["images"], blur3["vote_agreement"]) == (2, 1.0)
    assert blur3["vote_agreement_lower_bound"] == pytest.approx(0.05 ** (1 / 2))
    assert set(blur3["streams"]) == {"global", "face", "fusion"}
    assert all(v["max_abs_dp"] <= 1e-4 for v in blur3["streams"].values())


def test_max_pixels_is_the_decoding_limit_of_every_image_verified(tiny_engine_set, photographs, tmp_path,
                                                                   monkeypatch):
    """verify's own --max-pixels: a larger PNG was refused with advice to raise a limit verify
    did not have; a larger JPEG is compared on its reduced decode, the pixels detect scores."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))  # 512x512
    cv2.imwrite(str(folder / "coffee.jpg"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))  # 600x400
    decoded, decode = [], verify.decode_image
    monkeypatch.setattr(verify, "decode_image", lambda path, **kw: decoded.append(decode(path, **kw)) or decoded[-1])
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder), "--max-pixels", "200000")
    assert report["images"] == 1 and report["vote_agreement"] == 1.0
    [failed] = report["failed_images"]
    assert Path(failed["image"]).name == "astronaut.png" and "above the limit of 0.2 MP" in failed["error"]
    assert "--max-pixels of the dfd-export command" in failed["error"]
    assert [d.rgb.shape for d in decoded] == [(200, 300, 3)]  # coffee.jpg at 1/2
    assert decoded[0].reduction == 2


def test_weights_dir_for_a_random_weights_set_is_refused(tiny_random_engine_set, reference_ensemble):
    result = CliRunner().invoke(main, ["verify", str(tiny_random_engine_set), "--weights-dir",
                                       str(reference_ensemble.weights_dir)])
    assert result.exit_code == 1, result.output
    assert "was built with random weights, not from checkpoints" in result.output
    assert "leave --weights-dir out" in result.output


def _counts(**conditions):
    """verify's six conditions, every vote the same, except ``conditions`` (name=(agreed, compared))."""
    counts = {name: (100, 100) for name in ("clean", "jpeg10", "blur3", "noise25", "compound_a", "compound_b")}
    return {**counts, **conditions}


STREAMS_OK = {"clean": {"global": {"max_abs_dp": 0.3, "mean_abs_dp": 0.01}}}
INT8 = (1.0, 0.02, 0.95)


def test_each_condition_must_reach_the_agreement_on_its_own():
    """Pooled over the six conditions, 510 of 513 votes (99.4 %) stay the same, above 95 %; one
    degradation keeps only 10 of 13, which the pooled figure hid."""
    assert judge(_counts(), [], STREAMS_OK, INT8) == []
    assert judge(_counts(compound_b=(10, 13)), [], STREAMS_OK, INT8) == [
        "compound_b: vote agreement 76.9% < 95% (10 of 13 votes the same)"]
    assert judge(_counts(blur3=(0, 0)), [], STREAMS_OK, INT8) == ["blur3: no image could be compared"]
    assert judge(_counts(clean=(190, 200)), [], STREAMS_OK, (1.0, 0.02, 0.955)) == [
        "clean: vote agreement 95.0% < 95.5% (190 of 200 votes the same)"]
    assert judge(_counts(), [], {"clean": {"face": {"max_abs_dp": 1.5e-4, "mean_abs_dp": 0.03}}},
                 (1e-4, 0.02, 0.95)) == ["clean: face: max |dP| 1.50e-04 > 0.0001", "clean: face: mean |dP| 3.00e-02 > 0.02"]


def test_a_failure_line_never_reads_as_a_contradiction():
    """Rounded to the usual digits, a measurement just past its limit read as the limit itself:
    "vote agreement 100.0% < 100%" (1999 of 2000) and "max |dP| 5.00e-03 > 0.005"."""
    assert judge({"clean": (1999, 2000)}, [], STREAMS_OK, (1.0, 0.02, 1.0)) == [
        "clean: vote agreement 99.95% < 100% (1999 of 2000 votes the same)"]
    assert judge(_counts(), [], {"clean": {"global": {"max_abs_dp": 0.0050001, "mean_abs_dp": 0.0200004}}},
                 (0.005, 0.02, 0.0)) == ["clean: global: max |dP| 5.0001e-03 > 0.005",
                                         "clean: global: mean |dP| 2.00004e-02 > 0.02"]
    # a limit typed with more digits than :g's six is shown with them
    assert judge(_counts(), [], {"clean": {"global": {"max_abs_dp": 2.980225000015e-07, "mean_abs_dp": 0.0}}},
                 (2.98022500001e-07, 0.02, 0.0)) == ["clean: global: max |dP| 2.98023e-07 > 2.98022500001e-07"]
    assert judge({"clean": (12, 100)}, [], STREAMS_OK, (1.0, 0.02, 0.120000001)) == [
        "clean: vote agreement 12.0% < 12.0000001% (12 of 100 votes the same)"]
    # a limit typed with more than 12 digits is shown whole, as typed, so it is never rounded onto
    # the measurement's side (it read "1.11111111111699995e-01 > 0.111111111112")
    assert judge(_counts(), [], {"clean": {"global": {"max_abs_dp": 0.1111111111117, "mean_abs_dp": 0.0}}},
                 (0.1111111111116, 0.02, 0.0)) == ["clean: global: max |dP| 1.11111111112e-01 > 0.1111111111116"]
    assert judge(_counts(), [], {"clean": {"global": {"max_abs_dp": 0.11111111111205, "mean_abs_dp": 0.0}}},
                 (0.1111111111116, 0.02, 0.0)) == ["clean: global: max |dP| 1.11111111112e-01 > 0.1111111111116"]
    # so is a minimum agreement: 19 of 20 against 0.9500000000000001 read "95.00000000000000000% < 95.0%"
    # (the share went through a float /100 and the limit through a float x100, each rounding)
    assert judge({"clean": (19, 20)}, [], STREAMS_OK, (1.0, 0.02, 0.9500000000000001)) == [
        "clean: vote agreement 95.0% < 95.00000000000001% (19 of 20 votes the same)"]


def test_a_minimum_agreement_is_the_decimal_typed():
    """The float nearest 0.9 lies above 9/10, and 0.1 + 0.2 above 0.3; the minimum compared is
    the decimal the user typed, so 9 of 10 meets --min-agreement 0.9 and the text shows each
    threshold as typed, however many digits."""
    assert judge({"clean": (9, 10)}, [], STREAMS_OK, (1.0, 0.02, 0.9)) == []
    # 5/6 and 0.8333333333333334 are one float, so a float comparison passed 5 of 6 against a
    # minimum above 5/6 (rounding is monotonic: only this direction can differ)
    assert judge({"clean": (5, 6)}, [], STREAMS_OK, (1.0, 0.02, 0.8333333333333334)) == [
        "clean: vote agreement 83.3% < 83.33333333333334% (5 of 6 votes the same)"]
    assert judge({"clean": (5, 6)}, [], STREAMS_OK, (1.0, 0.02, 0.8333333333333333)) == []
    assert judge({"clean": (3, 10)}, [], STREAMS_OK, (1.0, 0.02, 0.1 + 0.2)) == [
        "clean: vote agreement 30.0% < 30.000000000000004% (3 of 10 votes the same)"]
    assert [share_as_typed(v) for v in (0.95, 0.955, 1.0, 0.0, 0.869, 1e-20)] == [
        "95%", "95.5%", "100%", "0%", "86.9%", "0.000000000000000001%"]
    assert share_beside_limit(0, 3, 1e-20) == ("0.0%", "0.000000000000000001%")
    assert share_beside_limit(2, 3, 0.66667) == ("66.6667%", "66.667%")  # not 66.7% nor 66.667%
    # the typed 0.1 lies below its float: "10.0%" reads below the float but not below what was typed
    assert share_beside_limit(99999, 1000000, 0.1) == ("9.9999%", "10%")
    # a |dP| below its limit is shown with the digits that read below it, not one rounded onto it
    assert verify.beside_limit(0.0049999, 0.005) == ("4.9999e-03", "0.005")


def test_an_agreement_below_every_vote_never_reads_100_percent(capsys):
    """The text report's agreements read on their side of 100% and 0%: 1999 of 2000 read "100.0%"
    on its condition's line, beside a FAILED line that said 99.95% < 100%."""
    from dfd.export.cli import _print_verification

    assert [verify.share_text(v) for v in (1999 / 2000, 1.0, 0.95, 0.0, 1 / 30000, 0.99996)] == [
        "99.95%", "100.0%", "95.0%", "0.0%", "0.003%", "99.996%"]
    assert verify.share_text(19999 / 20000, 2) == "99.995%"
    assert verify.share_text(1 - 1e-6) == "99.9999%"  # as many places as it takes, not a few more
    assert [verify.lower_bound_text(b) for b in (0.99763, 0.9835, 0.9995, 1.0, 0.0, 0.00049)] == [
        "99.7%", "98.3%", "99.9%", "100.0%", "0.0%", "0.0%"]
    streams = {"global": {"max_abs_dp": 1e-3, "mean_abs_dp": 1e-4}}
    report = verify.VerifyReport(
        "int8", images=2000, distinct_images=2000, streams=streams, vote_agreement=0.9876,
        vote_agreement_lower_bound=0.9835, confidence={"level": 0.95, "method": "Clopper-Pearson"},
        reference={"weights": "random", "seed": 0},
        thresholds={"max_abs_dp": 0.05, "mean_dp": 0.01, "min_vote_agreement": 0.955, "max_vote_change": 0.1,
                    "min_vote_agreement_applies_to": "each condition", "non_finite": "fail",
                    "unreadable_inputs": "left out"},
        per_condition={"clean": {"images": 2000, "vote_agreement": 1999 / 2000,
                                 "vote_agreement_lower_bound": 0.99763, "streams": streams}})
    _print_verification(report, Path("set"), to_stderr=False)
    out = capsys.readouterr().out
    # lower bounds round down: 99.763% is not "99.8%", 98.35% not "98.4%"
    assert "  clean vote agreement 99.95% over 2000 image(s), 95% lower bound 99.7%" in out
    assert "  vote agreement 98.76% (95% lower bound 98.3%, Clopper-Pearson)" in out  # pooled: two decimals
    assert "vote agreement >= 95.5% on each condition" in out  # the minimum as typed


def test_a_measurement_at_its_limit_passes():
    """The limits are the largest |dP| allowed: a bit-exact fp32 set meets --max-abs-dp 0, and an
    agreement equal to the minimum meets it."""
    exact = {"clean": {"global": {"max_abs_dp": 0.0, "mean_abs_dp": 0.0}}}
    assert judge(_counts(), [], exact, (0.0, 0.0, 0.0)) == []
    assert judge(_counts(), [], {"clean": {"face": {"max_abs_dp": 0.25, "mean_abs_dp": 0.015625}}},
                 (0.25, 0.015625, 0.0)) == []
    assert judge({"clean": (19, 20)}, [], STREAMS_OK, (1.0, 0.02, 0.95)) == []


def test_each_condition_must_keep_the_dp_limits_on_its_own():
    """The |dP| limits were applied to figures pooled over every condition: a fusion mean of 0.0178
    on compound_b passed a 0.015 limit because the pooled mean was 0.0115."""
    streams = {"clean": {"fusion": {"max_abs_dp": 0.03, "mean_abs_dp": 0.006}},
               "compound_b": {"fusion": {"max_abs_dp": 0.09, "mean_abs_dp": 0.0178}}}
    assert judge(_counts(), [], streams, (1.0, 0.015, 0.0)) == ["compound_b: fusion: mean |dP| 1.78e-02 > 0.015"]
    non_finite = [{"image": "coffee [jpeg10]", "streams": ["face"]}, {"image": "astronaut [clean]", "streams": ["face"]}]
    assert judge(_counts(), [], streams, (1.0, 0.02, 0.0), non_finite) == [
        "2 comparison(s) gave a non-finite engine probability; the first: coffee [jpeg10] (face stream)"]


def test_a_vote_that_moves_more_than_one_step_fails_whatever_the_agreement():
    one_step = {"image": "coffee [clean]", "reference": 0.7, "engine": 0.8, "steps": vote_steps(0.8, 0.7)}
    assert 0.8 - 0.7 > 0.1 and one_step["steps"] == 1  # one-decimal floats: one step, not "more than 0.1"
    assert judge(_counts(clean=(99, 100)), [one_step], STREAMS_OK, INT8) == []
    moved = [{"image": "astronaut [clean]", "reference": 0.3, "engine": 0.6, "steps": vote_steps(0.6, 0.3)},
             {"image": "coffee [blur3]", "reference": 0.5, "engine": 0.3, "steps": vote_steps(0.3, 0.5)}]
    assert [change["steps"] for change in moved] == [3, 2]
    assert judge(_counts(clean=(99, 100), blur3=(99, 100)), moved, STREAMS_OK, (1.0, 0.02, 0.0)) == [
        "astronaut [clean]: vote 0.3 -> 0.6 moved 3 steps (1 other vote(s) moved more than 1 step too)"]


def _binomial_tail(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p), summed exactly."""
    return sum(math.comb(trials, k) * p ** k * (1 - p) ** (trials - k) for k in range(successes, trials + 1))


def test_agreement_lower_bounds(monkeypatch):
    # Clopper-Pearson: all n agree -> 0.05 ** (1 / n); otherwise P(X >= x | bound) is exactly 5 %
    assert clopper_pearson_lower_bound(30, 30) == pytest.approx(0.05 ** (1 / 30))  # 90.5 %
    assert clopper_pearson_lower_bound(0, 13) == 0.0
    assert _binomial_tail(10, 13, clopper_pearson_lower_bound(10, 13)) == pytest.approx(0.05)
    # Wilson, one-sided z = 1.645: all n agree -> 1 / (1 + z^2 / n)
    z = NormalDist().inv_cdf(0.95)
    assert wilson_lower_bound(30, 30) == pytest.approx(1 / (1 + z * z / 30))  # 91.7 %, less cautious
    assert wilson_lower_bound(0, 13) == 0.0 and 0.5 < wilson_lower_bound(10, 13) < 10 / 13
    assert agreement_bound() == ("Clopper-Pearson (exact), one-sided 95%", clopper_pearson_lower_bound)
    find_spec = verify.importlib.util.find_spec
    monkeypatch.setattr(verify.importlib.util, "find_spec", lambda name: None if name == "scipy" else find_spec(name))
    assert agreement_bound() == ("Wilson score, one-sided 95%", wilson_lower_bound)


def _copy_with_global_head_bias(engine_set: Path, out: Path, bias: list[float]) -> Path:
    """The set with its global stream's head bias replaced, the file hash and manifest digest
    redone as a build would: an engine that really computes something else."""
    shutil.copytree(engine_set, out)
    graph_path = out / "global.fp32.onnx"
    graph = onnx.load(str(graph_path))
    head = next(init for init in graph.graph.initializer if init.name == "head.bias")
    head.CopyFrom(numpy_helper.from_array(np.array(bias, dtype=np.float32), "head.bias"))
    onnx.save(graph, str(graph_path))
    manifest = json.loads((out / "manifest.json").read_text())
    [entry] = manifest["streams"]["global"]["files"]
    entry.update(sha256=sha256_file(graph_path), bytes=graph_path.stat().st_size)
    write_rebuilt_manifest(out, manifest)
    return out


def test_an_engine_whose_votes_move_several_steps_fails_even_with_no_agreement_required(
        tiny_engine_set, photographs, tmp_path):
    """The global head always says "real" (P(fake) ~ 0): astronaut's vote falls from 0.6 to 0.2
    and coffee's from 0.3 to 0.1. With every other bound relaxed the vote-step rule still fails it."""
    broken = _copy_with_global_head_bias(tiny_engine_set, tmp_path / "broken", [10.0, -10.0])
    folder = _images(tmp_path, photographs)
    result, report = _run_verify(broken, tmp_path, "--images", str(folder), "--min-agreement", "0",
                                 "--max-abs-dp", "1", "--max-mean-dp", "1", exit_code=3)
    astronaut = f"{folder / 'astronaut.png'} [clean]"
    assert f"  {astronaut}: vote 0.6 -> 0.2 moved 4 steps (1 other vote(s) moved more than 1 step too)" in result.output
    assert f"largest vote change: 4 step(s), {astronaut} (0.6 -> 0.2)" in result.output
    assert report["largest_vote_change"] == {"image": astronaut, "engine": 0.2, "reference": 0.6, "steps": 4}
    assert report["thresholds"]["max_vote_change"] == 0.1
    assert report["thresholds"]["min_vote_agreement_applies_to"] == "each condition"
    assert report["thresholds"]["non_finite"] == "fail"  # the README: the thresholds name every rule
    assert report["failures"] == [f"{astronaut}: vote 0.6 -> 0.2 moved 4 steps (1 other vote(s) moved more than "
                                  f"1 step too)"] and not report["passed"]


def test_the_report_counts_distinct_images_bounds_the_agreement_and_names_its_provenance(
        tiny_engine_set, photographs, tmp_path):
    """The same photograph saved again as BMP is recognised by its pixels, verified once and
    warned about; two distinct photographs give a weak bound, and the warning says what to do."""
    folder = _images(tmp_path, photographs)
    cv2.imwrite(str(folder / "copy.bmp"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder))
    assert report["images"] == 2 and report["distinct_images"] == 2
    assert report["duplicate_images"] == [{"image": str(folder / "copy.bmp"), "same_as": str(folder / "coffee.png")}]
    bound = 0.05 ** (1 / 2)  # Clopper-Pearson, 2 of 2
    assert report["per_condition"]["clean"]["vote_agreement_lower_bound"] == pytest.approx(bound)
    assert report["vote_agreement_lower_bound"] == pytest.approx(bound)
    assert report["confidence"] == {"level": 0.95, "method": "Clopper-Pearson (exact), one-sided 95%"}
    assert "on 2 image x condition pair(s) from 2 distinct image(s)" in result.output
    assert "\n  clean vote agreement 100.0% over 2 image(s), 95% lower bound 22.3%" in result.output
    assert "(95% lower bound 22.3%, Clopper-Pearson (exact), one-sided 95%)" in result.output
    assert (f"WARNING: 1 image(s) have the same decoded pixels as an earlier one and were verified once: "
            f"{folder / 'copy.bmp'} = {folder / 'coffee.png'}") in result.output
    assert ("WARNING: only 2 distinct image(s) were verified, so the 95% lower bound on each condition's vote "
            "agreement is weak (with every vote the same it is 22.4%); pass --images with a folder of more "
            "photographs") in result.output
    manifest = load_manifest(tiny_engine_set)
    assert report["backend"].startswith("auto: onnxruntime ") and "TensorRT not used: " in report["backend"]
    assert report["engine_set_sha256"] == manifest.raw["content_sha256"] and report["image_source"] == str(folder)
    assert f"engine set  {tiny_engine_set} (content_sha256 {manifest.raw['content_sha256']})" in result.output
    assert f"backend     {report['backend']}" in result.output and f"images      {folder}" in result.output
    assert report["calibration_overlap"] is None and "calibration" not in result.output.lower()  # fp32: none


def test_calibration_images_among_the_verified_ones_are_counted_and_warned_about(
        reference_ensemble, photographs, tmp_path, monkeypatch):
    """By default a build calibrates on, and verify checks, the same packaged photographs (two here,
    to stay small). A manifest that predates the record says the overlap is unknown."""
    packaged = [("skimage:coffee.png", photographs["coffee"]), ("skimage:chelsea.png", photographs["chelsea"])]
    monkeypatch.setattr(sources, "builtin_photographs", lambda: packaged)  # what the build calibrates on
    monkeypatch.setattr(verify, "builtin_photographs", lambda: packaged)  # what verify checks
    fp16 = tmp_path / "fp16"
    result = CliRunner().invoke(main, [
        "build", "--weights-dir", str(reference_ensemble.weights_dir),
        "--models-dir", str(reference_ensemble.models_dir), "--out", str(fp16), "--lora-r", str(LORA_R),
        "--lora-alpha", str(LORA_ALPHA), "--precision", "fp16", "--calib-count", "2",
        "--calib-cache", str(tmp_path / "cache"), "--streams", "global", "--no-face-detector"])
    assert result.exit_code == 0, result.output
    assert len(load_manifest(fp16).raw["calibration"][SOURCE_PIXELS_KEY]) == 2
    result, report = _run_verify(fp16, tmp_path)
    assert report["calibration_overlap"] == 2 and report["image_source"] == "photographs shipped in installed packages"
    assert "calibration images among them: 2" in result.output
    assert ("WARNING: 2 of the 2 verified image(s) were calibration images of this set (skimage:coffee.png, "
            "skimage:chelsea.png): agreement on them is optimistic") in result.output
    older = tmp_path / "older"
    shutil.copytree(fp16, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["calibration"][SOURCE_PIXELS_KEY]
    write_rebuilt_manifest(older, manifest)
    result, report = _run_verify(older, tmp_path)
    assert report["calibration_overlap"] == "unknown"
    assert "calibration images among them: unknown" in result.output
    assert ("WARNING: this engine set's manifest does not record which images it was calibrated on") in result.output


def test_the_paper_compound_condition_is_one_seeded_draw_of_the_paper_engine(photographs):
    """Seeded by the pixels: the same image gets the same degraded copy in every run, different
    images get different draws, and a draw always changes the image."""
    from dfd.calibration.degrade import degrade, image_rng
    from dfd.export.verify import paper_compound

    astronaut, coffee = photographs["astronaut"], photographs["coffee"]
    once = paper_compound(astronaut)
    np.testing.assert_array_equal(once, paper_compound(astronaut.copy()))
    assert once.shape == astronaut.shape and once.dtype == np.uint8 and not np.array_equal(once, astronaut)
    rng = image_rng(0, astronaut)
    expected, applied = degrade(astronaut, rng)
    while not applied:
        expected, applied = degrade(astronaut, rng)
    np.testing.assert_array_equal(once, expected)
    assert not np.array_equal(paper_compound(coffee), coffee)


def test_an_engine_that_gives_nan_fails_the_set_with_a_report(tiny_engine_set, photographs, tmp_path, monkeypatch):
    """A NaN P(fake) (an fp16 overflow) raised out of the vote: exit 1, no image named, no report."""
    from dfd.runtime.backends import OnnxRuntimeBackend

    run = OnnxRuntimeBackend.run

    def face_overflows(self, stream, pixels):
        logits = run(self, stream, pixels)
        return np.full_like(logits, np.nan) if stream == "face" else logits

    monkeypatch.setattr(OnnxRuntimeBackend, "run", face_overflows)
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(_images(tmp_path, photographs)),
                                 exit_code=3)
    assert [entry["streams"] for entry in report["non_finite"]] == [["face"], ["face"]]
    assert report["per_condition"]["clean"]["vote_agreement"] == 0.0
    assert "2 comparison(s) gave a non-finite engine probability; the first: " in result.output
    assert "face" not in report["streams"] and "face" not in report["per_condition"]["clean"]["streams"]
    # the streams that gave a probability keep their |dP| (they were dropped with the face stream's NaN)
    assert set(report["streams"]) == {"global", "fusion"}
    assert report["streams"]["global"]["max_abs_dp"] < 1e-4
    # the text says which comparisons gave none (it said "changed: none" beside 0 % agreement)
    assert ("no probability (NaN/inf, each counted as a changed vote): astronaut.png [clean] (face), "
            "coffee.png [clean] (face)") in \
        result.output.replace(str(tmp_path / "images") + "/", "")


def test_the_report_names_its_reference_and_its_unread_inputs(tiny_engine_set, reference_ensemble, photographs,
                                                              tmp_path):
    folder = _images(tmp_path, photographs)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    result, report = _run_verify(tiny_engine_set, tmp_path, "--images", str(folder))
    assert report["reference"]["weights"] == "checkpoints"
    assert {Path(c["file"]).name for c in report["reference"]["checkpoints"].values()} == {
        "dinov2_252.pth", "dinov2_252_crop.pth", "dinov2_clip.pth"}
    assert "  reference   fp32 PyTorch from " in result.output
    assert "1 input(s) could not be read or prepared, so the comparison leaves them out" in " ".join(report["warnings"])
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--weights-dir", str(missing)])
    assert result.exit_code == 1 and f"--weights-dir {missing} is not a folder of checkpoints" in result.output


def test_json_is_never_written_over_what_verify_reads(tiny_engine_set, reference_ensemble, photographs, tmp_path):
    """--json over a checkpoint or an image of --images replaced it with the report; inside the
    set's folder it made a later build --force there refuse the set."""
    folder = _images(tmp_path, photographs)
    checkpoint = reference_ensemble.weights_dir / "dinov2_clip.pth"
    before = sha256_file(checkpoint)
    for target, message in ((checkpoint, "is a file this run reads"), (folder / "coffee.png", "is a file this run reads"),
                            (tiny_engine_set / "report.json", "is inside the engine set's folder")):
        result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(folder), "--json", str(target)])
        assert result.exit_code == 1 and message in result.output, result.output
    assert sha256_file(checkpoint) == before and not (tiny_engine_set / "report.json").exists()
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "no-set"), "--json", str(tmp_path / "new" / "r.json")])
    assert result.exit_code != 0 and not (tmp_path / "new").exists()


def test_a_jpeg_is_verified_with_the_face_input_detect_gives_it(tiny_engine_set, photographs, tmp_path, monkeypatch):
    """verify passed the decoded pixels, so a JPEG's face input skipped the reference crop step's
    re-encode that detect applies (face tensor off by up to 0.23)."""
    folder = tmp_path / "jpegs"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.jpg"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    seen = []
    prepare = Detector.prepare
    monkeypatch.setattr(Detector, "prepare", lambda self, image, label, **kw: seen.append(
        (label, prepare(self, image, label, **kw))) or seen[-1][1])
    verify.verify_engine_set(tiny_engine_set, folder)
    [(label, prepared)] = seen
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=True)
    expected = detector.prepare(folder / "coffee.jpg", "coffee.jpg")
    np.testing.assert_array_equal(prepared.tensors["face"], expected.tensors["face"])
    assert any("re-encoded" in note for note in prepared.detection.notes)


def test_a_random_weights_reference_warns_of_another_torch_only_when_it_is_another(tiny_engine_set, monkeypatch):
    """The build records the torch package's version (2.14.1); comparing it with torch.__version__
    (2.14.1+cu130 for the CUDA wheel the Makefile installs) warned of another torch on every set."""
    recorded = read_recorded_build(load_manifest(tiny_engine_set, verify=False))
    report = verify.VerifyReport(precision="fp32", reference={"weights": "random", "seed": 0})
    running = importlib.metadata.version("torch")
    for built_with, warned in ((running, False), ("1.13.1", True)):
        build = dataclasses.replace(recorded, versions={"torch": built_with})
        [warning] = verify._reference_warnings(build, report)
        assert warning.startswith("this engine set has RANDOM weights: the reference is rebuilt from seed 0")
        assert (f"under torch {running} where the set was built under torch 1.13.1" in warning) is warned, warning

    def no_metadata(name):  # a torch run from a source tree has no package metadata
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    [warning] = verify._reference_warnings(build, report)
    assert f"under torch {torch.__version__.split('+')[0]} where" in warning


def test_a_limit_typed_past_12_digits_reads_on_its_side_of_the_measurement():
    """A limit past 12 digits is shown whole, on either side of the measurement
    ("1.11111111112000005e-01 > 0.111111111112" read as a contradiction), and the measurement gets
    the digits that set it apart from it ("0.111111111111" hid the limit's last digit)."""
    assert beside_limit(0.111111111112, 0.1111111111116) == ("1.11111111112e-01", "0.1111111111116")
    assert beside_limit(0.11111111111141, 0.1111111111114) == ("1.1111111111141e-01", "0.1111111111114")

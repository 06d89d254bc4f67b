"""``dfd-export bench`` on the tiny engine set: the result document, the plot, what it refuses and
leaves out, and that the PyTorch comparison computes what the engines compute. No timing
assertions: performance is measured in benchmarks/, never in unit tests. The bench package's
parts are tested beside this file (flops, measure, environment, pipelines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_rebuilt_manifest
from dfd.export.bench import measure as bench_measure
from dfd.export.bench import cli as bench_cli
from dfd.export.bench.cli import bench
from dfd.export.cli import main
from dfd.export.bench.measure import bench_images
from dfd.export.bench.pipelines import reference_cannot_open


@pytest.fixture(scope="module")
def bench_result(tiny_engine_set, photographs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-images")
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    coffee = np.ascontiguousarray(photographs["coffee"][:260, :300])
    # a JPEG: the reference's cropping step saves its face input as a JPEG crop file, for both pipelines
    cv2.imwrite(str(folder / "coffee.jpg"), cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")  # left out and reported, not fatal
    # readable, but under the 252 crop the reference pipeline needs: it sank the run after the engines were timed
    cv2.imwrite(str(folder / "small.png"), np.zeros((80, 100, 3), np.uint8))
    out = tmp_path_factory.mktemp("bench-out")
    args = [str(tiny_engine_set), "--images", str(folder), "--batch-sizes", "1,2", "--warmup", "0",
            "--iterations", "2", "--compare", "torch", "--json", str(out / "r.json"),
            "--label", "nightly $\\frac$\x1b[2J"]
    args += ["--plot", str(out / "r.png")]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "r.json").read_text()), out, result.output


def test_result_document_has_every_field(bench_result):
    result, _, output = bench_result
    for key in ("schema", "settings", "images", "engine_set", "face_localisation", "flops", "environment",
                "memory", "runs", "speedup", "sanity", "torch_weights", "warnings"):
        assert key in result, key
    env = result["environment"]
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1
    assert env["memory_total_bytes"] > 0
    for package in ("dfd-export", "onnxruntime", "tensorrt", "torch", "cuda"):
        assert package in env["versions"], package
    # this checkout's commit, so a recorded result names the code it measured
    assert env["versions"]["dfd-export_commit"].split("+")[0] == subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert env["usable_cores"] >= 1
    assert "gpus" in env and "jetson" in env
    assert result["memory"]["process_peak_rss_bytes"] > 0
    assert result["memory"]["interleaved_peak_rss_bytes"] >= result["memory"]["rss_before_bytes"]
    assert set(result["runs"]) == {"runtime", "torch"}
    assert set(result["speedup"]) == {"1", "2"}
    for batch, speedup in result["speedup"].items():  # the README quotes these ratios: each from its runs' p50s
        torch_run, runtime_run = (result["runs"][name]["batches"][batch] for name in ("torch", "runtime"))
        streams = {name: sum(v["p50"] for stage, v in run["stages_ms"].items() if stage.startswith("stream:"))
                   for name, run in (("torch", torch_run), ("runtime", runtime_run))}
        assert speedup["end_to_end_p50"] == pytest.approx(torch_run["latency_ms"]["p50"]
                                                          / runtime_run["latency_ms"]["p50"])
        assert speedup["streams_p50"] == pytest.approx(streams["torch"] / streams["runtime"])
        assert speedup["without_face_localisation_p50"] == pytest.approx(
            torch_run["stage_sum_ms_p50"]
            / (runtime_run["stage_sum_ms_p50"] - runtime_run["stages_ms"]["face_localisation"]["p50"]))
    assert result["torch_weights"] == ["global: checkpoint dinov2_252.pth", "face: checkpoint dinov2_252_crop.pth",
                                       "fusion: checkpoint dinov2_clip.pth"]
    assert "speed-up vs torch at batch 1" in output
    # on screen too, its control character shown escaped; the plot did not take "$...$" for math (it raised)
    assert result["label"] == "nightly $\\frac$\x1b[2J"
    assert "\nrun: nightly $\\frac$\\x1b[2J\npipeline " in output


def test_unreadable_images_and_those_the_reference_cannot_take_are_left_out_and_reported(bench_result):
    result, _, output = bench_result
    assert result["images"]["count"] == 2 and result["images"]["sizes"] == ["512x512", "300x260"]
    corrupt, small = result["images"]["skipped"]
    assert corrupt["image"].endswith("corrupt.jpg") and "not an image OpenCV can decode" in corrupt["error"]
    assert small["image"].endswith("small.png") and small["error"] == (
        "an image of 100x80 is smaller than the 252 crop, which the reference pipeline (--compare torch) cannot take")
    assert any(w.startswith("left out 2 input(s) that could not be read or used: corrupt.jpg (") for w in
               result["warnings"])
    assert "corrupt.jpg" in output and "small.png" in output


def test_percentiles_are_ordered_and_stages_present(bench_result):
    result, _, _ = bench_result
    for name, run in result["runs"].items():
        assert set(run["batches"]) == {"1", "2"}
        for batch, report in run["batches"].items():
            lat = report["latency_ms"]
            assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
            assert report["iterations"] == 2
            assert report["throughput_images_per_s"] == pytest.approx(int(batch) / lat["p50"] * 1e3)
            expected = {"decode", "preprocess", "stream:global", "stream:face", "stream:fusion", "vote"}
            if name == "runtime" and result["face_localisation"]["present"]:
                expected.add("face_localisation")
            assert set(report["stages_ms"]) == expected


def test_torch_comparison_gives_the_engines_probabilities(bench_result):
    sanity = bench_result[0]["sanity"]
    assert sanity["images"] == 2
    assert all(delta < 1e-5 for delta in sanity["max_abs_delta_p"].values()), sanity
    assert sanity["votes_equal"] == sanity["votes_total"] == 2


def test_plot_is_written(bench_result):
    _, out, _ = bench_result
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_give_one_clear_error(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(bench, [str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "error: engine set folder not found" in missing.output  # the one error format of every verb
    bad = runner.invoke(bench, [str(tmp_path), "--batch-sizes", "1,x"])
    assert bad.exit_code != 0 and "comma-separated integers" in bad.output
    for value, message in [("", "at least one batch size"), (" , ", "at least one batch size"),
                           ("4,0", "must be positive, got '4,0'"),
                           # an empty entry was skipped and "1_0" read as 10
                           ("1,,2", "comma-separated integers like 1,4,16, got '1,,2'"),
                           ("1_0", "comma-separated integers")]:
        result = runner.invoke(bench, [str(tmp_path), "--batch-sizes", value])
        assert result.exit_code != 0 and message in result.output, (value, result.output)


def test_reports_are_never_written_over_what_bench_reads(tiny_engine_set, reference_ensemble, tmp_path):
    """--json over a checkpoint of --compare torch, or --plot over an image of --images, replaced
    it with the report; --json X --plot X kept the plot, the results lost."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = folder / "a.png"
    cv2.imwrite(str(image), np.full((300, 300, 3), 90, np.uint8))
    checkpoint = reference_ensemble.weights_dir / "dinov2_252.pth"
    before = checkpoint.read_bytes(), image.read_bytes()
    args = [str(tiny_engine_set), "--images", str(folder), "--iterations", "1", "--warmup", "0", "--batch-sizes", "1"]
    for option, target in (("--json", checkpoint), ("--plot", image)):
        result = CliRunner().invoke(main, ["bench", *args, "--compare", "torch", option, str(target)])
        assert result.exit_code == 1 and f"{target} is a file this run reads" in result.output, result.output
        assert "p50" not in result.output  # refused before measuring
    same = tmp_path / "report"
    result = CliRunner().invoke(main, ["bench", *args, "--json", str(same), "--plot", str(same)])
    assert result.exit_code == 1 and "is the --json file too; the plot would replace the results" in result.output
    assert (checkpoint.read_bytes(), image.read_bytes()) == before and not same.exists()


def test_a_folder_without_one_readable_image_is_refused(tiny_engine_set, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    result = CliRunner().invoke(bench, [str(tiny_engine_set), "--images", str(tmp_path), "--iterations", "1"])
    assert result.exit_code == 1, result.output
    assert f"error: no image in {tmp_path} could be used; the first: '{tmp_path / 'corrupt.jpg'}' is not an image" in result.output
    assert "Traceback" not in result.output


def test_a_missing_or_empty_images_folder_is_refused_as_verify_refuses_it(tiny_engine_set, tmp_path, monkeypatch):
    """``--images missing`` failed after the engine set was opened (at paper size, 15 GB hashed);
    ``--images ""`` (an unset variable) benchmarked the current folder and its sub-folders."""
    monkeypatch.chdir(tmp_path)
    for value, refusal in ((str(tmp_path / "missing"), f"Directory '{tmp_path / 'missing'}' does not exist"),
                           ("", "is empty (an unset shell variable?)")):
        result = CliRunner().invoke(main, ["bench", str(tiny_engine_set), "--images", value])
        assert result.exit_code == 1 and refusal in result.output, result.output
        assert "open engine set" not in result.output


def test_an_unwritable_output_fails_before_measuring(tiny_engine_set, tmp_path):
    """A --json or --plot path that cannot be written is refused at once, not after the run (at
    paper size, hours) whose result it would have lost."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    for option in ("--json", "--plot"):
        result = CliRunner().invoke(bench, [str(tiny_engine_set), option, str(blocker / "out.x"), "--iterations", "1"])
        assert result.exit_code != 0, result.output
        assert f"cannot create the folder for {blocker / 'out.x'}: {blocker} is a file, not a folder" in result.output
        assert "pipeline" not in result.output and "Traceback" not in result.output  # nothing was measured


def test_weights_dir_finds_checkpoints_that_moved_since_the_build(tiny_engine_set, reference_ensemble, tmp_path):
    moved = tmp_path / "set"
    shutil.copytree(tiny_engine_set, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["build"]["weights_dir"] = str(tmp_path / "gone")
    write_rebuilt_manifest(moved, manifest)
    args = [str(moved), "--batch-sizes", "1", "--warmup", "0", "--iterations", "1", "--compare", "torch"]
    lost = CliRunner().invoke(bench, args)
    assert lost.exit_code == 1 and "recorded by the manifest is not there" in lost.output
    assert "pass --weights-dir where they are now" in lost.output
    found = CliRunner().invoke(bench, [*args, "--weights-dir", str(reference_ensemble.weights_dir)])
    assert found.exit_code == 0, found.output


def test_weights_dir_that_nothing_would_use_is_refused(tiny_engine_set, tiny_random_engine_set, reference_ensemble):
    weights = str(reference_ensemble.weights_dir)
    alone = CliRunner().invoke(bench, [str(tiny_engine_set), "--iterations", "1", "--weights-dir", weights])
    assert alone.exit_code == 1 and "--weights-dir is used only by --compare torch" in alone.output
    ignored = CliRunner().invoke(bench, [str(tiny_random_engine_set), "--iterations", "1", "--compare", "torch",
                                         "--weights-dir", weights])
    assert ignored.exit_code == 1 and "was built with random weights" in ignored.output
    assert "p50 ms" not in ignored.output  # refused before measuring


def test_a_set_the_runtime_refuses_is_reported_before_images_are_chosen_for_it(tiny_engine_set, tmp_path):
    """bench chose images for the input sizes the manifest gives before opening the set, so a
    manifest its graphs contradict was blamed on the images ("no built-in photograph fits")."""
    folder = tmp_path / "set"
    shutil.copytree(tiny_engine_set, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["streams"]["global"]["input_size"] = manifest["preprocessing"]["global"]["size"] = 10**9
    write_rebuilt_manifest(folder, manifest)
    result = CliRunner().invoke(bench, [str(folder), "--iterations", "1", "--warmup", "0", "--batch-sizes", "1"])
    assert result.exit_code == 1 and "photograph" not in result.output, result.output
    assert "the global stream's network takes 3x252x252 inputs but the manifest says 3x1000000000x1000000000" \
        in result.output


def test_no_warmup_is_pointed_out(bench_result):
    result, _, output = bench_result
    assert any(w.startswith("--warmup 0: each batch size's first recorded iteration includes one-time costs")
               for w in result["warnings"])
    assert "WARNING: --warmup 0" in output


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_measuring(tiny_engine_set):
    result = CliRunner().invoke(bench, [str(tiny_engine_set), "--batch-sizes", "1,1000000000", "--iterations", "1"])
    assert result.exit_code == 1, result.output
    assert "error: a batch of 1000000000 holds at least" in result.output and "measure smaller batch sizes" in result.output
    assert "pipeline" not in result.output and "Traceback" not in result.output


def test_an_image_the_runtime_cannot_score_is_left_out_with_its_reason(photographs, tiny_engine_set, tmp_path):
    """A readable 1x3000 strip, too elongated for the crop streams, stopped the whole benchmark
    when the runtime reached it ("the runtime could not score ...")."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "b.png"), np.zeros((1, 3000, 3), np.uint8))
    images = bench_images(folder, tmp_path, count=8, stream_sizes={"global": 252, "fusion": 224})
    assert [p.name for p in images.paths] == ["a.png"]
    [skipped] = images.skipped
    assert skipped["image"] == str(folder / "b.png") and "is too elongated to score" in skipped["error"]
    result = CliRunner().invoke(bench, [str(tiny_engine_set), "--images", str(folder), "--batch-sizes", "1",
                                        "--iterations", "1", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "b.png" in result.output and "too elongated" in result.output


def test_max_pixels_leaves_out_what_the_pipelines_would_not_decode_alike(photographs, tmp_path, monkeypatch):
    """bench --max-pixels: a larger PNG is left out, with the advice the message gives; a larger
    JPEG is scored on its reduced decode alone, and left out next to the reference pipeline
    (--compare torch), which would read it at full size and so score other pixels."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    coffee = cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR)  # 600x400
    cv2.imwrite(str(folder / "a.jpg"), coffee)
    cv2.imwrite(str(folder / "b.png"), coffee)
    cv2.imwrite(str(folder / "c.png"), coffee[:300, :300])
    alone = bench_images(folder, tmp_path, count=8, max_pixels=200_000)
    assert [p.name for p in alone.paths] == ["a.jpg", "c.png"] and alone.sizes == [(300, 200), (300, 300)]
    [(refused, why)] = [(Path(s["image"]).name, s["error"]) for s in alone.skipped]
    assert refused == "b.png" and "--max-pixels of the dfd-export command" in why
    beside_torch = bench_images(folder, tmp_path, count=8, stream_sizes={"global": 252, "fusion": 224},
                                compare_torch=True, max_pixels=200_000)
    assert [p.name for p in beside_torch.paths] == ["c.png"]
    assert beside_torch.skipped[0]["error"].startswith("a JPEG of 600x400, over --max-pixels, is decoded reduced "
                                                       "(1/2) by the runtime and at full size by the reference")
    settings = []
    monkeypatch.setattr(bench_cli, "run_benchmark", lambda s, **kw: settings.append(s) or sys.exit(0))
    result = CliRunner().invoke(bench, ["engines", "--max-pixels", "200000"])
    assert result.exit_code == 0 and settings[0].max_pixels == 200_000


def test_a_name_opencv_cannot_open_is_left_out_beside_torch_only(tiny_engine_set, photographs, tmp_path):
    """cv2.imread crashes the process (segmentation fault) on a name that is not UTF-8, and took a
    --compare torch run down with it; the runtime reads such a file, so bench alone still times it."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    odd = os.fsdecode(os.path.join(os.fsencode(folder), b"b_\xff\xfe.png"))
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    shutil.copyfile(folder / "a.png", os.fsencode(odd))
    sizes = {"global": 252, "face": 252, "fusion": 224}
    alone = bench_images(folder, tmp_path, count=8, stream_sizes=sizes)
    assert sorted(str(p) for p in alone.paths) == sorted([str(folder / "a.png"), odd])
    beside_torch = bench_images(folder, tmp_path, count=8, stream_sizes=sizes, compare_torch=True)
    assert beside_torch.paths == [folder / "a.png"]
    assert beside_torch.skipped == [{"image": odd, "error": reference_cannot_open(Path(odd))}]
    assert "not valid UTF-8" in beside_torch.skipped[0]["error"]
    run = subprocess.run([sys.executable, "-m", "dfd.export.cli", "bench", str(tiny_engine_set), "--images", str(folder),
                          "--batch-sizes", "1", "--warmup", "0", "--iterations", "1", "--compare", "torch"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "not valid UTF-8" in run.stderr and "torch" in run.stdout


def test_a_locked_sub_folder_files_without_an_image_suffix_and_repeats_are_reported(tiny_engine_set, photographs,
                                                                                   tmp_path, make_unlistable):
    """A sub-folder that cannot be listed stopped the benchmark, where detect reports it and goes
    on; a folder's .gif files were dropped without a word, and a batch larger than the usable
    images repeated them without one."""
    folder = tmp_path / "dataset"
    (folder / "locked").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "locked" / "b.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    (folder / "clip.gif").write_bytes(b"GIF89a")
    make_unlistable(folder / "locked")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(bench, [str(tiny_engine_set), "--images", str(folder), "--batch-sizes", "1,3",
                                        "--warmup", "0", "--iterations", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"]["names"] == ["a.png"]
    assert report["images"]["skipped"] == [{"image": str(folder / "locked"), "error": "cannot list this folder "
                                            "(Permission denied); its images, if any, are left out"}]
    assert report["warnings"][-3:] == [
        f"left out 1 file(s) in {folder} whose names do not end in an image suffix: clip.gif",
        "left out 1 input(s) that could not be read or used: locked (cannot list this folder (Permission denied); "
        "its images, if any, are left out)",
        f"{folder} gave 1 usable image(s), fewer than the largest batch size 3: its batches repeat images, "
        "each decoded again"]


def _quick_bench(engine_dir: Path, out: Path, *extra: str):
    return CliRunner().invoke(bench, [str(engine_dir), "--batch-sizes", "1,2", "--warmup", "0", "--iterations", "2",
                                      "--json", str(out / "r.json"), *extra])


def test_an_interrupt_keeps_the_batch_sizes_measured_to_the_end(tiny_engine_set, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) lost every finished iteration: no result, no JSON."""
    from dfd.export.bench import pipelines

    calls = []
    end_to_end = pipelines.RuntimePipeline.end_to_end

    def interrupted_in_batch_2(self, paths):
        calls.append(len(paths))
        if len(paths) == 2 and calls.count(2) == 2:  # batch 2's first timed iteration, after batch 1's two
            raise KeyboardInterrupt
        return end_to_end(self, paths)

    monkeypatch.setattr(pipelines.RuntimePipeline, "end_to_end", interrupted_in_batch_2)
    result = _quick_bench(tiny_engine_set, tmp_path, "--plot", str(tmp_path / "r.png"))
    assert result.exit_code == 130, result.output
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["interrupted"] and list(document["runs"]["runtime"]["batches"]) == ["1"]
    assert "interrupted while measuring batch 2: the results hold the batch sizes measured to the end (1)" in \
        " ".join(document["warnings"])
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_is_in_the_format_its_suffix_names_and_an_unknown_one_is_refused_before_the_run(
        tiny_engine_set, tmp_path):
    """--plot x.svg or x.jpg wrote PNG data under that name; plot.xyz was PNG too, unasked."""
    result = _quick_bench(tiny_engine_set, tmp_path, "--plot", str(tmp_path / "plot.XYZ"))
    assert result.exit_code == 1, result.output
    assert f"--plot {tmp_path / 'plot.XYZ'}: .xyz is not an image format matplotlib writes; use one of " in \
        result.output and ".svg" in result.output
    assert "pipeline" not in result.output and not (tmp_path / "r.json").exists()  # nothing was measured
    result = _quick_bench(tiny_engine_set, tmp_path, "--plot", str(tmp_path / "plot.svg"))
    assert result.exit_code == 0, result.output
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:1000]
    result = _quick_bench(tiny_engine_set, tmp_path, "--plot", str(tmp_path / "plot.JPG"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plot.JPG").read_bytes()[:3] == b"\xff\xd8\xff"


def test_outputs_are_replaced_whole_or_not_at_all(tiny_engine_set, tmp_path, monkeypatch):
    """--json was truncated first (a full disk left cut-off JSON where the last result was); --plot
    'out' became 'out.png'."""
    from dfd.runtime import atomic_files

    (tmp_path / "r.json").write_text('{"earlier": true}')
    result = _quick_bench(tiny_engine_set, tmp_path, "--plot", str(tmp_path / "plot"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plot").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "plot.png").exists()
    earlier = (tmp_path / "r.json").read_text()

    real_replace = atomic_files.os.replace

    def full_disk(source, target):  # the report's folder is full; the temporary images' is not
        if Path(target).parent == tmp_path:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(atomic_files.os, "replace", full_disk)
    result = _quick_bench(tiny_engine_set, tmp_path)
    assert result.exit_code == 1 and f"cannot write {tmp_path / 'r.json'}: No space left on device" in result.output
    assert (tmp_path / "r.json").read_text() == earlier
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_a_runtime_benchmark_never_imports_torch_and_releases_its_detector(tiny_engine_set):
    """capture_environment imported torch for every benchmark (the runtime's RSS figures grew by
    ~0.5 GB); RuntimePipeline.close dropped the Detector without closing it (GPU buffers on TensorRT)."""
    probe = ("import sys; from dfd.export.bench.environment import capture_environment; "
             "environment = capture_environment([]); print('torch' in sys.modules, environment['versions']['torch'])")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.split()[0] == "False"
    from dfd.export.bench.pipelines import RuntimePipeline

    pipeline = RuntimePipeline(tiny_engine_set, "onnxruntime", 5_000_000)
    detector = pipeline.detector
    assert detector.max_pixels == 5_000_000  # bench --max-pixels: the runtime decodes with it
    pipeline.close()
    pipeline.close()
    assert detector.closed


def test_a_benchmark_closes_its_detector_when_it_ends_and_when_it_fails(tiny_engine_set, tmp_path, monkeypatch):
    """run_benchmark closed the runtime's Detector only before a torch pipeline that did not fit
    beside it: a notebook benchmarking several sets on TensorRT leaked GPU buffers each time."""
    from dfd.runtime.detector import Detector

    opened = []
    real_open = Detector.open
    monkeypatch.setattr(Detector, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    assert _quick_bench(tiny_engine_set, tmp_path).exit_code == 0
    monkeypatch.setattr(bench_measure, "_batch_of", lambda *a: [tmp_path / "gone.png"])  # every timed batch fails
    failed = _quick_bench(tiny_engine_set, tmp_path)
    assert failed.exit_code == 1 and "gone.png" in failed.output
    assert len(opened) == 2 and all(detector.closed for detector in opened)



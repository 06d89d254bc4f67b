"""The ``dfd-export`` command line.

Every verb imports its heavy machinery lazily, so ``detect``/``inspect``/``doctor`` never load
torch, and ``--help`` is instant. Option groups shared by several verbs are defined once here
(Polygraphy-style argument groups). Known failures print one ``error:`` line and exit 1; a
traceback means a bug.
"""

from __future__ import annotations

import codecs
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.core import ParameterSource

from dfd.runtime.decoder_messages import capturing_decoder_messages
from dfd.runtime.errors import DfdError, first_few
from dfd.runtime.face_boxes import BOX_COLUMNS
from dfd.runtime.images import silence_opencv_log
from dfd.runtime.vote import STREAMS as STREAM_CHOICES

from .cli_errors import handles_errors, printable, require_stdout, termination_interrupts, warn
from .cli_types import DEGRADING_MEMORY, FiniteFloatRange, GivenPath, OutputFolder, RowOutput, Verb, \
    files_a_run_reads, is_stdout, max_pixels_option, prepare_output_file, same_file, write_output_file
from .detect_resume import ENGINE_SET_FIELD, ScoredImages, check_engine_set, load_scored_images, refuse_stdout_over
from .onnx_files import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET


def engine_dir_argument(func):
    return click.argument("engine_dir", type=GivenPath())(func)


def streams_option(func):
    return click.option(
        "--streams",
        default=",".join(STREAM_CHOICES),
        show_default=True,
        help="Comma-separated subset of streams to build. A set without all three votes with the streams it "
             "has (their weights renormalised), which is not the paper's ensemble: for tests and benchmarks.",
        callback=_parse_streams,
    )(func)


def _parse_streams(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in names if s not in STREAM_CHOICES]
    if bad or not names:
        raise click.BadParameter(f"unknown stream(s) {bad or value!r}; choose from {', '.join(STREAM_CHOICES)}")
    return tuple(s for s in STREAM_CHOICES if s in names)


class _Group(click.Group):
    """Usage errors exit 1 (not click's 2): exit 2 means "some images failed" for ``detect``."""

    command_class = Verb

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dfd-export")
def main() -> None:
    """Export the NTIRE 2026 three-stream deepfake detector to ONNX/TensorRT engine sets and
    run them with a lean runtime.

    \b
    Typical flow:
      dfd-export build --weights-dir W --models-dir M --out engines/fp32
      dfd-export inspect engines/fp32
      dfd-export detect engines/fp32 photos/ --format jsonl
    """
    if hasattr(sys.stdout, "reconfigure"):
        # a name the locale's encoding cannot show (an "ü" under LANG=C or PYTHONIOENCODING=ascii) is
        # written as an escape: it was a UnicodeEncodeError traceback, and the rows after it lost
        sys.stdout.reconfigure(errors="backslashreplace")
    silence_opencv_log()  # every verb reports an unreadable image itself
    # and what libjpeg/libpng print about one becomes its note or error, for this command only
    click.get_current_context().with_resource(capturing_decoder_messages())


@main.command()
@click.option("--out", "out_dir", type=OutputFolder(), default=None,
              help="Engine set folder to write [default: engines/<precision>].")
@click.option("--weights-dir", type=GivenPath(file_okay=False), default=None,
              help="Folder with the reference checkpoints dinov2_252.pth, dinov2_252_crop.pth, "
                   "dinov2_clip.pth. Without it the streams are RANDOMLY initialised (demo only).")
@click.option("--models-dir", type=GivenPath(file_okay=False), default=None,
              help="Folder laid out like the reference's models/: dinov2-giant/config.json and "
                   "clip-vit-large-patch14/config.json (any size). Default: the paper's DINOv2-giant "
                   "and CLIP ViT-L/14.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp32: exact to the reference. fp16: mixed precision (LayerNorm, softmax, residual stream and "
                   "heads stay fp32). int8: explicit Q/DQ on the linear layers, calibrated.")
@click.option("--calib-dir", type=GivenPath(file_okay=False), default=None,
              help="Calibration images for fp16/int8 [default: photographs shipped in installed packages].")
@click.option("--calib-count", type=click.IntRange(min=1), default=256, show_default=True,
              help="Calibration images sampled (reproducibly; repeats only when the folder has fewer).")
@click.option("--calib-degrade", type=FiniteFloatRange(0, 1), default=0.5, show_default=True,
              help="Share of calibration images passed through the paper's compound degradation engine.")
@click.option("--calib-method", type=click.Choice(["entropy", "max"]), default="entropy", show_default=True,
              help="INT8 activation range: entropy (KL threshold, as TensorRT) or max.")
@click.option("--calib-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of sampling and degradation.")
@click.option("--calib-cache", type=GivenPath(file_okay=False), default=None,
              help="Cache folder for calibration sets; the 4 most recently used are kept [default: "
                   "$XDG_CACHE_HOME/dfd-export/calibration, else ~/.cache/dfd-export/calibration].")
@max_pixels_option("among the calibration images is calibrated from its reduced decode (1/2 .. 1/8)",
                   "is replaced as an unreadable one is (reported)", DEGRADING_MEMORY)
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "auto"]), default="onnxruntime",
              show_default=True, help="onnxruntime: ONNX graphs only. tensorrt: also compile strongly typed "
              "TensorRT engines for this GPU (needs TensorRT and a GPU). auto: tensorrt when possible.")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True, help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=4, show_default=True, help="TensorRT profile: batch tuned for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True, help="TensorRT profile: largest batch.")
@click.option("--workspace-gib", type=FiniteFloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--version-compatible", is_flag=True, help="TensorRT: engines loadable by later TensorRT versions.")
@click.option("--hardware-compatibility", is_flag=True, help="TensorRT: engines portable across Ampere+ GPUs.")
@streams_option
@click.option("--lora-r", type=click.IntRange(min=1), default=32, show_default=True,
              help="LoRA rank the checkpoints were trained with (the reference: 32).")
@click.option("--lora-alpha", type=FiniteFloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="LoRA alpha (the reference: 64); adapters merge as W + alpha/r * B @ A. Checkpoints do not "
                   "store it, so a wrong value cannot be detected: it silently changes every score.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (from 23 attention is exported as one fused node whose "
                   "softmax the fp16/INT8 passes cannot keep in fp32).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random initialisation.")
@click.option("--force", is_flag=True, help="Replace an existing engine set in the output folder. A folder that is not a dfd-export engine set, or "
                   "an engine set that holds other files, is never deleted; the old set stays until the new one is "
                   "complete.")
@click.option("--no-face-detector", is_flag=True,
              help="Do not ship the face localisers (BlazeFace and MTCNN); detect then needs --face-crops or face "
                   "boxes, or uses the reference's no-face rule.")
@handles_errors
def build(out_dir, weights_dir, models_dir, precision, calib_dir, calib_count, calib_degrade, calib_method,
          calib_seed, calib_cache, max_pixels, backend, min_batch, opt_batch, max_batch, workspace_gib,
          version_compatible, hardware_compatibility, streams, lora_r, lora_alpha, opset, seed, force, no_face_detector):
    """Build an engine set: import checkpoints, export each stream to ONNX, write manifest.json."""
    from .build import BuildRequest, build_engine_set
    from .configs import LoraSettings
    from .tensorrt_build import TensorRTOptions

    context = click.get_current_context()
    unused = _flags_given(context, _TENSORRT_ONLY_OPTIONS)
    if backend == "onnxruntime" and unused:
        warn(f"{', '.join(unused)} only shape{'s' if len(unused) == 1 else ''} TensorRT engines, and --backend "
             "onnxruntime builds none "
             "(its ONNX graphs take any batch size); pass --backend tensorrt or auto to build engines")
    unused = _flags_given(context, _CALIBRATION_OPTIONS)
    if precision == "fp32" and unused:
        warn(f"{', '.join(unused)} only shape{'s' if len(unused) == 1 else ''} the calibration of fp16 and int8 "
             "graphs, and an fp32 build has "
             "none; pass --precision fp16 or int8 to use them")
    elif precision == "fp16" and "--calib-method" in unused:
        warn("--calib-method only chooses INT8 activation ranges; an fp16 build uses its calibration set to find "
             "the values out of fp16's range, whatever the method")
    unused = _flags_given(context, ("lora_r", "lora_alpha"))
    if weights_dir is None and unused:
        warn(f"{', '.join(unused)} describe the adapters of the checkpoints in --weights-dir, and without it the "
             "streams are random")
    if weights_dir is not None and _flags_given(context, ("seed",)):
        warn("--seed only initialises random streams, and the streams come from the checkpoints in --weights-dir")

    request = BuildRequest(
        out_dir=out_dir or Path("engines") / precision,
        weights_dir=weights_dir,
        models_dir=models_dir,
        precision=precision,
        backend=backend,
        streams=streams,
        lora=LoraSettings(lora_r, lora_alpha),
        opset=opset,
        seed=seed,
        force=force,
        face_detector=not no_face_detector,
        tensorrt=TensorRTOptions(min_batch, opt_batch, max_batch, workspace_gib, version_compatible,
                                 hardware_compatibility),
        calib_dir=calib_dir,
        calib_count=calib_count,
        calib_degrade=calib_degrade,
        calib_method=calib_method,
        calib_seed=calib_seed,
        calib_cache=calib_cache,
        calib_max_pixels=max_pixels,
    )
    replaces_cwd = out_dir is not None and same_file(out_dir, Path("."))  # the build replaces that folder
    with termination_interrupts():
        manifest = build_engine_set(request, warn=warn)
    click.echo(f"engine set written: {manifest.parent}")
    if replaces_cwd:
        click.echo("note: the set replaced the folder this shell is in; run `cd .` to see its files", err=True)


_TENSORRT_ONLY_OPTIONS = ("min_batch", "opt_batch", "max_batch", "workspace_gib", "version_compatible",
                          "hardware_compatibility")
_CALIBRATION_OPTIONS = ("calib_dir", "calib_count", "calib_degrade", "calib_method", "calib_seed", "calib_cache",
                        "max_pixels")


def _flags_given(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """Which of these options the user typed (not defaults), as spelled on the command line."""
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]


@main.command()
@engine_dir_argument
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 of every file (faster on large sets); the manifest "
              "digest, and each file's presence and size, are still checked.")
@handles_errors
def inspect(engine_dir, as_json, no_verify):
    """Print an engine set's manifest readably (and check its integrity).

    Exit status 0 when the set is intact, 3 when ENGINE_DIR is not an engine set or fails its
    integrity check (as doctor's), 1 on a usage error or when stdout cannot be written.
    """
    import json

    from dfd.runtime.manifest import EngineSetError, load_manifest, manifest_digest, verify_files

    require_stdout()
    try:
        manifest = load_manifest(engine_dir, verify=False)
        verify_files(manifest, hashes=not no_verify)
    except EngineSetError as exc:  # the verdict, not a failure to give one: a script tells them apart
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    if as_json:
        click.echo(json.dumps(manifest.raw, indent=2))
        return
    raw = manifest.raw
    click.echo(f"engine set   {manifest.root}")
    versions = raw.get("tool_versions")  # the trains side's record, not checked to run: shown as it is
    built_by = versions.get("dfd-export", "?") if isinstance(versions, dict) else "?"
    click.echo(printable(f"created      {raw.get('created_utc', '?')}  by dfd-export {built_by}"))
    if manifest.random_weights:
        click.secho("weights      RANDOM (demo/benchmark set; scores are meaningless)", fg="yellow")
    click.echo("vote         " + ", ".join(f"{k} {v:g}" for k, v in manifest.vote_weights.items())
               + "  (one-decimal per stream, weighted mean, round half to even)")
    tensorrt = raw.get("tensorrt")
    if tensorrt is not None:  # checked when the manifest was parsed: what the engines run on
        portable = [text for option, text in (
            ("version_compatible", "version-compatible (later TensorRT versions run it)"),
            ("hardware_compatibility", "hardware-compatible (any Ampere or newer GPU runs it)"))
            if tensorrt["options"].get(option)]
        click.echo(printable(f"tensorrt     {tensorrt['version']} on {tensorrt.get('gpu', 'a GPU')} (compute capability "
                             f"{tensorrt['compute_capability']}), {tensorrt.get('platform', 'platform not recorded')}; "
                             + (f"built {' and '.join(portable)}" if portable else
                                "runs on that TensorRT version and GPU architecture only")))
    click.echo("integrity    ok (" + ("manifest digest, and every file present with its size; sha256 not checked: "
                                     "--no-verify)" if no_verify else "manifest digest and sha256 of every file)"))
    # what detect's rows name as their engine_set, and a resume is checked against
    click.echo(f"content      sha256 {manifest_digest(raw)}  (detect rows' engine_set)")
    click.echo("")
    click.echo(f"{'stream':8} {'input':>9} {'precision':>9} {'backend':>12} {'size':>10}  files")
    for name, stream in manifest.streams.items():
        size = sum(f.bytes for f in stream.files)
        files = ", ".join(f.path for f in stream.files)
        click.echo(printable(f"{name:8} {stream.input_size:>4}x{stream.input_size:<4} {stream.precision:>9} "
                             f"{stream.backend:>12} {size / 1e6:>8.1f}MB  {files}"))
    _echo_face_localisers(manifest.face_detector)


def _echo_face_localisers(entry) -> None:
    """The set's face detectors, or why the facial stream will fall back to the no-face rule."""
    click.echo("")
    if entry is None:
        click.echo("faces        no packaged face detector (built with --no-face-detector): the facial stream "
                   "uses --face-crops or the reference's no-face rule")
        return
    size = sum(f.bytes for f in entry.files) / 1e6
    click.echo(f"faces        {entry.details.get('model', 'face detector')}, score >= "
               f"{entry.details.get('score_threshold', '?')}  ({entry.precision}, ONNX Runtime)")
    small = entry.details.get("small_faces")
    if small:
        click.echo(f"small faces  {small.get('model', 'MTCNN')}, thresholds "
                   f"{'/'.join(f'{t:g}' for t in small.get('thresholds', []))}")
    else:
        click.echo("small faces  none in this set (built before MTCNN was packaged): letterbox pass only")
    click.echo(printable(f"             {size:.1f}MB  {', '.join(f.path for f in entry.files)}"))


@main.command()
@click.argument("engine_dir", required=False, type=GivenPath())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (keys documented in dfd.runtime.doctor).")
@handles_errors
def doctor(engine_dir, as_json):
    """Report what this machine can run: ONNX Runtime providers, CUDA, GPU, TensorRT, NVRTC
    kernel compilation for the local GPU, sm_87 (Jetson Orin) and sm_90 (H100), and whether
    ENGINE_DIR (optional) can run here.

    Exit status 0; with ENGINE_DIR, 3 when it is not a readable engine set or a stream cannot run
    on the backend it was built for (e.g. TensorRT engines on a machine without TensorRT, even
    where --backend auto would fall back to the stream's ONNX graph), so a deployment script can
    gate on it. ENGINE_DIR's files are checked for presence and size, not hashed (15 GB to read
    at the paper's sizes): `dfd-export inspect ENGINE_DIR` hashes them, as opening the set does."""
    import json

    from dfd.runtime.doctor import collect_doctor_report

    require_stdout()
    report = collect_doctor_report(engine_dir)
    engine = report.get("engine_set")
    runs_as_built = engine is None or (engine["error"] is None and all(
        stream["runnable"] for stream in engine["streams"].values()))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        sys.exit(0 if runs_as_built else 3)
    gpu, trt, kernels = report["gpu"], report["tensorrt"], report["kernels"]
    ort_info = report["onnxruntime"]
    click.echo(f"python       {report['python']['version']}")
    click.echo(f"onnxruntime  {ort_info.get('version', '-')}  providers: {', '.join(ort_info.get('providers', [])) or ort_info.get('error')}")
    click.echo(f"gpu          {gpu.get('name') + ' (' + gpu.get('arch', '?') + ')' if gpu.get('available') else gpu.get('reason')}")
    click.echo(f"tensorrt     {trt.get('version') if trt.get('available') else trt.get('reason')}")
    click.echo(f"nvrtc        {kernels.get('nvrtc_version') or '-'}  "
               + "  ".join(f"{arch}: {state}" for arch, state in (kernels.get("ptx") or {}).items()))
    engine = report.get("engine_set")
    if engine:
        click.echo(f"engine set   {engine['path']}" + (f": {engine['error']}" if engine["error"] else ""))
        for name, stream in (engine.get("streams") or {}).items():
            state = "runnable" if stream.get("runnable") else f"not runnable: {stream.get('reason')}"
            click.echo(f"  {name:7} {stream.get('precision')} {stream.get('backend')}  {state}")
    sys.exit(0 if runs_as_built else 3)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=OutputFolder(outside_engine_sets=True),
              help="Folder for the degraded copies (PNG, lossless), all in this one folder: an image "
                   "becomes <its name without its suffix>.png there (a.jpg -> a.png), and images whose names "
                   "share that stem (a.jpg and a.png, or a.jpg in two folders; case ignored) get -1, -2, ... "
                   "suffixes in input order; each line printed says which file became which.")
@click.option("--fixed", type=str, default=None, callback=lambda ctx, param, value: _check_fixed(value),
              help="One fixed degradation for every image: jpeg10, blur3, noise25, gamma_dark, down4_up, "
                   "compound_a or compound_b. Default: the paper's random compound degradation.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random draws: the compound degradation and, with --share, which images are degraded.")
@click.option("--share", type=FiniteFloatRange(0, 1), default=1.0, show_default=True,
              help="Fraction of images degraded, with --fixed too (a seeded draw per image; the rest are "
                   "copied unchanged).")
@click.option("--recursive", is_flag=True, help="Also take the images in sub-folders of a folder (never the copies "
              "degrade wrote into --out). An --out inside a folder given, holding images degrade did not write "
              "there, is refused with or without it.")
@click.option("--force", is_flag=True, help="Replace files that already exist in --out (an input is never replaced).")
@click.option("--resume", is_flag=True, help="Keep the copies an earlier, interrupted run wrote into --out from the "
              "same images with the same settings (as recorded in its hidden .dfd-degrade-copies.jsonl, and "
              "unchanged since) and degrade the rest.")
@max_pixels_option("is degraded from its reduced decode (1/2 .. 1/8, noted)", "fails on its own line",
                   DEGRADING_MEMORY)
@handles_errors
def degrade(inputs, out_dir, fixed, seed, share, recursive, force, resume, max_pixels):
    """Write degraded copies of images (the paper's compound degradation engine), for verify and
    benchmarks: INPUTS are image files and folders, each image becomes one PNG in --out, and each
    line printed says which file became which (and what decoding converted: EXIF rotation, alpha,
    16-bit, a reduced decode of a huge JPEG). Each image's draw depends on --seed and its pixels,
    not its name. One unreadable image is reported and the others still processed (exit 2).
    Nothing is overwritten without --force, and an input never; --resume goes on where an
    interrupted run stopped."""
    from tqdm import tqdm

    from dfd.calibration.degrade import DegradationError
    from dfd.calibration.degrade_files import degrade_files

    require_stdout()  # each line says which file became which: lost without one, for a run that exits 0
    if fixed is not None and share >= 1 and _flags_given(click.get_current_context(), ("seed",)):
        warn("--seed has no effect: a --fixed degradation draws nothing, and with --share 1 every image is degraded")
    paths, problems = _degrade_inputs(inputs, out_dir, recursive)
    for given, message in problems:
        click.echo(printable(f"error: {given}: {message}"), err=True)
    if not paths:
        if problems:
            sys.exit(2)
        raise DegradationError("no images to degrade")
    failed, kept, written = len(problems), 0, 0
    results = degrade_files([Path(p) for p in paths], out_dir, seed=seed, fixed=fixed, share=share, replace=force,
                            resume=resume, max_pixels=max_pixels)
    # the bar only on a terminal, where each line is written above it: in a file or a pipe its
    # redraws began the lines printed after them, so scripts looking for "error:" missed some
    with termination_interrupts(), tqdm(total=len(paths), desc="degrade", unit="image", file=sys.stderr,
                                        disable=len(paths) < 2 or not sys.stderr.isatty(), leave=False) as bar:
        for result in results:
            with bar.external_write_mode(file=sys.stderr):
                if result.output is not None:
                    notes = f"  ({'; '.join(result.notes)})" if result.notes else ""
                    # with a share, which images are the degraded ones is the label a user needs
                    kind = ("" if share >= 1 else "  [degraded]" if result.degraded
                            else "  [clean copy: outside the --share]")
                    kept, written = kept + result.kept, written + (not result.kept)
                    click.echo(printable(f"{result.source} -> {result.output}{kind}"
                                         f"{'  [kept: written by an earlier run]' if result.kept else ''}{notes}"))
                else:
                    failed += 1
                    click.echo(printable(f"error: {result.error}"), err=True)  # the message names the file
            bar.update(1)
    if kept:
        click.echo(f"kept {kept} cop(ies) an earlier run wrote, wrote {written} new one(s)", err=True)
    if failed:
        click.echo(f"{failed} of {len(paths) + len(problems)} input(s) failed", err=True)
        sys.exit(2)


def _check_fixed(name: str | None) -> str | None:
    """A --fixed name degrade knows, checked before the inputs are scanned (a bad name came after
    the scan's warnings, or after "no images" with exit 2)."""
    from dfd.calibration.degrade import FIXED_DEGRADATIONS

    if name is not None and name not in FIXED_DEGRADATIONS:
        raise click.BadParameter(f"unknown fixed degradation {name!r}; known: {', '.join(FIXED_DEGRADATIONS)}")
    return name


def _degrade_inputs(inputs: tuple[str, ...], out_dir: Path, recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """The images to degrade, each once (by resolved path, first spelling kept), and the problems.
    A folder argument that holds --out leaves out the copies degrade wrote there earlier (with a
    warning), and refuses an --out that holds anything else, scanned (--recursive) or not: those
    are the user's images (a sub-folder of originals), which --force would have replaced as if they
    were old copies. An
    image or folder named explicitly is always taken, since the output checks already refuse to
    overwrite an input. An --out that is a folder argument itself is refused: its images and their
    copies would be one folder."""
    from dfd.calibration.degrade import DegradationError
    from dfd.calibration.degrade_files import is_recorded_copy, recorded_copies

    # realpath, not Path.resolve: a symbolic link loop among the images stopped the run with a
    # traceback (Python 3.11 raises RuntimeError); the loop fails on its own line when it is read
    out_root = Path(os.path.realpath(out_dir))
    images: list[str] = []
    problems: list[tuple[str, str]] = []
    left_out: list[str] = []
    not_copies: list[str] = []  # images inside --out that degrade did not write there
    records: dict[Path, dict[str, set[str]]] = {}  # folder inside --out -> the copies recorded there
    seen: set[Path] = set()
    repeated = 0
    for given in inputs:
        given_root = Path(os.path.realpath(given))
        is_folder = _is_folder(given)
        if is_folder and given_root == out_root:
            raise DegradationError(f"--out {out_dir} is the folder {given} of the images to degrade; write the "
                                   f"degraded copies to another folder")
        found, given_problems = expand_inputs((given,), recursive=recursive)
        problems += given_problems
        scans_out = is_folder and given_root in out_root.parents
        for image in found:
            resolved = Path(os.path.realpath(image))
            if scans_out and out_root in resolved.parents:
                folder = Path(image).parent
                if folder not in records:
                    records[folder] = recorded_copies(folder)
                (left_out if is_recorded_copy(Path(image), records[folder]) else not_copies).append(image)
            elif resolved in seen:
                repeated += 1
            else:
                seen.add(resolved)
                images.append(image)
    if not recursive and any(_is_folder(given) and Path(os.path.realpath(given)) in out_root.parents
                             for given in inputs):
        # not scanned, yet --force would replace the originals there whose names the copies take
        not_copies += _images_not_recorded_as_copies(out_dir)
    if not_copies:
        raise DegradationError(f"--out {out_dir} lies inside a folder being degraded and holds {len(not_copies)} "
                               f"image(s) that degrade did not write there (originals?): {first_few(not_copies)}; "
                               f"choose an --out outside the folders being degraded, or a new one")
    if left_out:
        warn(f"left out {len(left_out)} earlier degraded cop(ies) inside --out {out_dir}: {first_few(left_out)}")
    if repeated:
        warn(f"{repeated} image(s) given more than once (or through links to one file) are degraded once")
    return images, problems


def _images_not_recorded_as_copies(folder: Path) -> list[str]:
    """The images directly in ``folder`` that degrade did not write there (none where it does not
    exist or holds no image)."""
    from dfd.calibration.degrade_files import is_recorded_copy, recorded_copies
    from dfd.calibration.sources import ImageSourceError, scan_image_folder

    try:
        found = scan_image_folder(folder, recursive=False).images
    except ImageSourceError:
        return []
    copies = recorded_copies(folder)
    return [str(image) for image in found if not is_recorded_copy(image, copies)]


def _thresholds_text(thresholds: dict) -> str:
    """verify's thresholds in the words of its options and the README."""
    return (f"max |dP| {thresholds['max_abs_dp']:g}, mean |dP| {thresholds['mean_dp']:g}, vote agreement >= "
            f"{thresholds['min_vote_agreement']:.1%} on {thresholds['min_vote_agreement_applies_to']}, a vote moves at "
            f"most {thresholds['max_vote_change']:g}, non-finite probability: {thresholds['non_finite']}, unreadable "
            f"inputs: {thresholds['unreadable_inputs']}")


def _print_verification(report, engine_dir: Path, to_stderr: bool) -> None:
    """verify's report as text: the measurements and verdict on stdout (on stderr with
    ``to_stderr``: the JSON report goes to stdout), the images left out and the failed rules on
    stderr."""
    echo = functools.partial(click.echo, err=to_stderr)
    level = f"{report.confidence['level']:.0%} lower bound"
    echo(f"{report.precision} engine set vs fp32 PyTorch on {report.images} image x condition pair(s) "
         f"from {report.distinct_images} distinct image(s)")
    echo(f"  engine set  {engine_dir} (content_sha256 {report.engine_set_sha256})")
    echo(f"  backend     {report.backend}")
    reference = report.reference
    if reference["weights"] == "checkpoints":
        echo(f"  reference   fp32 PyTorch from {', '.join(c['file'] for c in reference['checkpoints'].values())}")
    else:
        echo(f"  reference   fp32 PyTorch with random weights from seed {reference['seed']}")
    echo(printable(f"  images      {report.image_source}"))
    for stream, values in report.streams.items():
        echo(f"  {stream:7} max |dP| {values['max_abs_dp']:.2e}   mean |dP| {values['mean_abs_dp']:.2e}")
    width = max(map(len, report.per_condition), default=0)  # paper_compound is the longest name
    for condition, values in report.per_condition.items():
        measured = (f"vote agreement {values['vote_agreement']:.1%} over {values['images']} image(s), {level} "
                    f"{values['vote_agreement_lower_bound']:.1%}" if values["images"] else "no image could be compared")
        echo(f"  {condition:{width}} {measured}")
    echo(printable(f"  vote agreement {report.vote_agreement:.2%} ({level} {report.vote_agreement_lower_bound:.1%}, "
                   f"{report.confidence['method']}); changed: "
                   + (", ".join(f"{c['image']} ({c['reference']} -> {c['engine']})" for c in report.changed_votes)
                      or "none")))
    largest = report.largest_vote_change
    echo(printable("  largest vote change: " + (f"{largest['steps']} step(s), {largest['image']} "
                                              f"({largest['reference']} -> {largest['engine']})"
                                              if largest else "none")))
    if report.calibration_overlap is not None:
        echo(f"  calibration images among them: {report.calibration_overlap}")
    for warning in report.warnings:
        warn(warning)
    for failure in report.failed_images:
        under = f" (under {', '.join(failure['conditions'])})" if "conditions" in failure else ""
        click.echo(printable(f"  left out {failure['image']}{under}: {failure['error']}"), err=True)
    if report.passed:
        echo(f"passed thresholds: {_thresholds_text(report.thresholds)}")
    else:
        click.echo(f"FAILED thresholds: {_thresholds_text(report.thresholds)}", err=True)
        for failure in report.failures:
            click.echo(printable(f"  {failure}"), err=True)


@main.command()
@engine_dir_argument
@click.option("--images", "images_dir", type=GivenPath(file_okay=False, exists=True), default=None,
              help="Folder of images, searched with its sub-folders [default: photographs shipped in installed "
                   "packages].")
@click.option("--degrade", is_flag=True, help="Also check JPEG q10, blur, noise, two compound degradations and one seeded draw of the "
                   "paper's random compound engine per image.")
@click.option("--weights-dir", type=GivenPath(file_okay=False), default=None,
              help="Checkpoints the set was built from, if they moved since the build.")
@click.option("--max-abs-dp", type=FiniteFloatRange(0, 1), default=None, help="Fail above this per-stream max |ΔP|, a "
              "difference of probabilities, so 0 to 1 [default by precision: fp32 1e-4, fp16 5e-3, int8 1.0, i.e. no bound: INT8 is judged by mean |ΔP| and vote agreement].")
@click.option("--max-mean-dp", type=FiniteFloatRange(0, 1), default=None, help="Fail above this per-stream mean |ΔP| [default: fp32 1e-4, fp16 5e-3, int8 0.02].")
@click.option("--min-agreement", type=FiniteFloatRange(0, 1), default=None,
              help="Fail when the vote agreement of any condition (clean, each degradation) is below this "
                   "[default: 1.0, int8 0.95]. A vote that moves more than one step (0.1) fails whatever the agreement.")
@click.option("--strict", is_flag=True,
              help="Also fail (exit 3) when an image of --images cannot be read or prepared; by default it is "
                   "reported and left out, and the others decide. No image readable at all is an error (exit 1) "
                   "either way.")
@click.option("--json", "json_out", type=GivenPath(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
              help="Runtime backend whose results are compared; auto picks TensorRT when the set has engines and it is "
                   "usable here.")
@max_pixels_option("is compared on its reduced decode (1/2 .. 1/8), as detect scores it",
                   "is reported unreadable and left out", DEGRADING_MEMORY)
@handles_errors
def verify(engine_dir, images_dir, degrade, weights_dir, max_abs_dp, max_mean_dp, min_agreement, strict, json_out,
           backend, max_pixels):
    """Compare an engine set with the fp32 PyTorch streams it was built from: per-stream |ΔP(fake)|,
    vote agreement per condition with a lower confidence bound, the images whose vote changed, how many
    distinct images (and calibration images) it rests on. Exits 3 when a rule fails, naming it.

    Both sides take the same host-prepared (NumPy/OpenCV) tensors, so each engine is judged on the
    very input it ran; on a TensorRT set the fused CUDA preprocessing and vote that detect uses by
    default are checked by the kernel tests and benchmarks/gpu_check.py, not here."""
    import json

    from dfd.runtime.manifest import load_manifest, verify_files

    from .verify import DEFAULT_THRESHOLDS, engine_set_precision, verify_engine_set

    require_stdout()
    # a folder that is no set, or an edited manifest, fails before anything is made or read from it
    manifest = load_manifest(engine_dir, verify=False)
    verify_files(manifest, hashes=False)  # the digest and sizes; the hashes when the set is opened
    # a bad path fails now, not after the whole comparison; never over a file the run reads
    prepare_output_file(json_out, "--json", engine_dir, inputs=files_a_run_reads(images_dir, manifest, weights_dir))
    overrides = (max_abs_dp, max_mean_dp, min_agreement)
    thresholds = None
    if any(v is not None for v in overrides):
        precision = engine_set_precision(manifest)
        thresholds = tuple(v if v is not None else d for v, d in zip(overrides, DEFAULT_THRESHOLDS[precision]))
    with termination_interrupts():  # SIGTERM or SIGHUP ends it as Ctrl-C does (exit 130)
        report = verify_engine_set(engine_dir, images_dir, degrade, weights_dir, thresholds, backend, max_pixels,
                                   strict)
    report_error = None  # the report is written first: a stdout that fails must not lose it
    if json_out:
        text = json.dumps(report.to_dict(), indent=2).encode()
        try:
            write_output_file(json_out, lambda file: file.write(text))
        except DfdError as exc:
            report_error = exc
    _print_verification(report, engine_dir, to_stderr=is_stdout(json_out))
    if report_error is not None:
        if report.passed:
            raise report_error
        # the verdict is known and printed: a script must still read "failed" (3), not "error" (1)
        click.echo(f"error: {report_error}", err=True)
    if not report.passed:
        sys.exit(3)


# x1..y2: the face box the face stream was cropped on, so the output is also a --face-boxes file
_CSV_FIELDS = ("image", "score", "raw_score", "global", "face", "fusion", "face_source", "face_used", *BOX_COLUMNS,
               "error", "notes", ENGINE_SET_FIELD)


def _is_folder(given: str) -> bool:
    """Whether an argument names a folder. A path that cannot even be looked at (a name too long,
    a folder on the way that may not be entered) is taken as a file, which then fails on its own
    line as an unreadable image instead of ending the run."""
    try:
        return Path(given).is_dir()
    except OSError:
        return False


def expand_inputs(inputs: tuple[str, ...], recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given; folders expanded to their images (``scan_image_folder``, the calibration
    sets' rule). Returns (images, problems); a folder's other files are named in a warning on
    stderr, since a file given by name is tried whatever its suffix."""
    from dfd.calibration.sources import ImageSourceError, NoImagesError, scan_image_folder

    images: list[str] = []
    problems: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given)
        if not given:  # Path("") is the current folder, whose images were all scored
            problems.append((given, "an empty image argument (an unset shell variable?); give '.' for the "
                                    "current folder"))
            continue
        if not _is_folder(given):
            if given.endswith(os.sep) and not os.path.lexists(given):  # "photos/": a folder was meant
                a_file = os.path.isfile(given.rstrip(os.sep))
                problems.append((given, "a file, not a folder (drop the trailing /)" if a_file else "no such folder"))
                continue
            images.append(given)  # a missing file becomes a per-image error in the detector
            continue
        try:
            found = scan_image_folder(path, recursive=recursive)
        except ImageSourceError as exc:
            hint = " (use --recursive to look in them)" if isinstance(exc, NoImagesError) and exc.sub_folders else ""
            problems.append((given, f"{exc}{hint}"))
            continue
        images.extend(str(p) for p in found.images)
        problems += found.unlisted()
        left_out = found.left_out_files(path)
        if left_out:
            warn(f"{left_out} (give a file by name to try it anyway)")
        if found.sub_folders:
            names = [p.name for p in found.sub_folders]
            warn(f"did not look in {len(names)} sub-folder(s) of {given}: {first_few(names)} "
                 "(use --recursive to include their images)")
    return images, problems


def _format_table_row(d: dict, omitted_notes: frozenset[str] = frozenset()) -> str:
    """One image's row, then its notes indented below it, but ``omitted_notes``: what the decoder
    said of a damaged file, a conversion, an upscale are as much the result as the score."""
    if d["error"]:  # the message names the file too
        return f"{printable(d['image'])}  ERROR: {printable(d['error'])}"
    streams = "  ".join(f"{s} {p:.4f}" for s, p in d["streams"].items())
    row = f"{printable(d['image'])}  score {d['score']:.1f}  (raw {d['raw_score']:.4f})  {streams}  face: {_face_input(d)}"
    return row + "".join(f"\n    note: {printable(note)}" for note in d["notes"] if note not in omitted_notes)


def _notes_the_table_omits() -> frozenset[str]:
    """Notes the table's row already states (where the face stream's image came from), or that
    every JPEG gets (its face image re-encoded as the reference's crop files are): one under
    each row would bury the rest. jsonl and csv carry every note."""
    from dfd.runtime.detector import FACE_INPUT_NOTES
    from dfd.runtime.preprocess import FACE_REENCODE_NOTE, FACE_REENCODE_SUFFIXES

    return FACE_INPUT_NOTES | {FACE_REENCODE_NOTE.format(suffix=suffix) for suffix in FACE_REENCODE_SUFFIXES}


def _face_input(d: dict) -> str:
    """Where the face stream's image came from, and which image it was: a found face under 1/9 of
    the image, or none found, means the original image."""
    face = d["face"] or {}
    source, used = face.get("source", "none"), face.get("used")
    if not face:
        used = "original image"
    return f"{source} -> {used}" if used else source


def _csv_row(d: dict) -> dict:
    face = d["face"] or {}
    box = face.get("box") or (None,) * 4
    return {
        "image": d["image"], "score": d["score"], "raw_score": d["raw_score"],
        **{s: d["streams"].get(s) for s in STREAM_CHOICES},
        "face_source": face.get("source"), "face_used": face.get("used"), **dict(zip(BOX_COLUMNS, box)),
        "error": d["error"], "notes": "; ".join(d["notes"]), ENGINE_SET_FIELD: d[ENGINE_SET_FIELD],
    }


@main.command()
@engine_dir_argument
@click.argument("images", nargs=-1, required=True)
@click.option("--face-crops", type=GivenPath(file_okay=False, exists=True), default=None,
              help="Folder of face crops with the same file names as the images, cropped the reference's "
                   "way; the face stream takes their 252 centre crop. A crop may also sit at the image's path "
                   "relative to the folder argument holding it (crops/sub/a.png for photos/sub/a.png of "
                   "photos), which is needed where two images share a name. Images without one go to the "
                   "packaged face detector (or, with --no-face-detect, use the original image).")
@click.option("--face-boxes", type=GivenPath(dir_okay=False, exists=True), default=None,
              help="File of face boxes you already have (e.g. RetinaFace's, as the reference uses): .csv with "
                   "columns image,x1,y1,x2,y2 or .jsonl lines {\"image\": \"a.jpg\", \"box\": [x1, y1, x2, y2]}, "
                   "pixels of the image; image is its path as listed here or its file name. The runtime crops "
                   "them the reference's way. Images without a box go to the packaged face detector (or, with "
                   "--no-face-detect, use the original image). detect's own jsonl/csv output is such a file: "
                   "rerun with it to hold the located faces fixed (e.g. to compare two engine sets).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True,
              help="Output format on stdout: table (a row per image, its notes indented below it) or jsonl/csv, "
                   "which carry the raw (unrounded) stream probabilities and the engine set that scored each "
                   "image (engine_set: its content sha256, as inspect shows it).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per inference batch. Output rows appear a batch at a time; 1 writes each "
                   "row as soon as its image is scored.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
              help="Inference backend; auto picks TensorRT when the set has engines and it is usable here.")
@click.option("--recursive", is_flag=True, help="Look for images in sub-folders of folder arguments.")
@click.option("--no-face-detect", is_flag=True,
              help="Do not locate faces: images without a face crop or box use the reference's no-face rule.")
@click.option("--face-min-px", type=FiniteFloatRange(min=0), default=40.0, show_default=True,
              callback=lambda ctx, param, value: _check_face_min_px(value),
              help="Smallest face (image pixels) the face locator looks for: on images too large for BlazeFace's "
                   "192-pixel pass to see it, MTCNN looks for faces from this size up at full resolution "
                   "(~100-300 ms for a 1920-pixel image on 2 CPU cores); at least 12, MTCNN's smallest window. "
                   "0: the 192-pixel pass only, faster, misses small faces.")
@click.option("--no-face-cascade", is_flag=True,
              help="When the face locator's plain pass finds no face, do not retry on the reference's nine "
                   "enhanced copies of the image (bilateral, median, non-local means, CLAHE, ...). Much faster on "
                   "photographs without a face (12 MP on 2 CPU cores: ~0.7 s of face localisation instead of "
                   "~1.9 s); a badly degraded face may then go unfound.")
@click.option("--host-preprocessing", is_flag=True,
              help="tensorrt backend: preprocess and vote with NumPy/OpenCV on the host instead of the fused "
                   "CUDA kernels (for comparisons and debugging; the results are identical except where x86 "
                   "OpenCV's IPP bicubic upscale differs by one grey level).")
@click.option("--cuda-graph-batch", type=click.IntRange(min=1), default=None,
              help="tensorrt backend: replay one CUDA graph of preprocessing -> three engines -> vote for "
                   "batches of exactly this many images (set --batch-size to match; other sizes run uncaptured).")
@click.option("--skip-scored", type=GivenPath(dir_okay=False, exists=True), default=None,
              help="An earlier run's --format jsonl or csv output: the images it lists with a score are not scored "
                   "again (those that failed there are), so an interrupted run resumes by appending to the same "
                   "file with >>. Images are matched by their path as detect lists it. The file's suffix (.jsonl "
                   "or .csv) says its format; rows another engine set scored are refused.")
@max_pixels_option("is decoded reduced (1/2 .. 1/8)", "fails on its own line",
                   "Face localisation and resizing hold a few copies of an image in memory (3 bytes a pixel each)")
@handles_errors
def detect(engine_dir, images, face_crops, face_boxes, fmt, batch_size, backend, recursive, no_face_detect, face_min_px,
           no_face_cascade, host_preprocessing, cuda_graph_batch, skip_scored, max_pixels):
    """Score images (files or folders) with an engine set.

    One output line per image, in the order given (a folder's images sorted; a folder that
    yields none, or cannot be listed, is a failed input in its place).

    Exit status: 0 when every image was scored, 2 when some failed (their output carries
    "error"), 1 on a usage or engine-set error or when the output cannot be written, 130 when
    interrupted, 141 when the reader of stdout went away (| head).
    """
    import csv
    import io
    import json

    from tqdm import tqdm

    from dfd.runtime.detector import Detector
    from dfd.runtime.manifest import CONTENT_HASH_KEY, load_manifest, manifest_digest

    if face_crops is not None and face_boxes is not None:
        raise click.UsageError("give --face-crops or --face-boxes, not both: each says what the face stream sees")
    if cuda_graph_batch is not None and cuda_graph_batch > batch_size:
        raise click.BadParameter(f"{cuda_graph_batch} is more than --batch-size {batch_size}, the most images scored "
                                 f"at a time, so the graph would never replay; give at most {batch_size}",
                                 param_hint="--cuda-graph-batch")
    require_stdout()
    if fmt != "table" and hasattr(sys.stdout, "reconfigure"):
        # csv and jsonl are data, read back as UTF-8 (--skip-scored, --face-boxes) whatever the locale;
        # a file name that is not valid in the file system's encoding is held with surrogate escapes
        # (PEP 383), which csv writes back as its original bytes
        utf8 = codecs.lookup(sys.stdout.encoding).name in ("utf-8", "utf-8-sig")  # keeps a BOM asked for
        sys.stdout.reconfigure(encoding=None if utf8 else "utf-8", errors="surrogateescape")
    output = RowOutput(sys.stdout)
    scored = None
    if skip_scored is not None:
        refuse_stdout_over(skip_scored)
        scored = load_scored_images(skip_scored)
    _check_continuation(output, fmt, scored)
    if scored is not None:
        unchecked = check_engine_set(scored, manifest_digest(load_manifest(engine_dir, verify=False).raw), engine_dir)
        if unchecked:
            warn(unchecked)
    paths: list[str] = []
    problems_before: dict[int, list[tuple[str, str]]] = {}  # image position -> (input, why) given just before
    skipped = 0
    for given in images:
        found, found_problems = expand_inputs((given,), recursive)
        if found_problems:
            problems_before.setdefault(len(paths), []).extend(found_problems)
        if scored is not None:
            kept = [path for path in found if not scored.holds(path)]
            skipped, found = skipped + len(found) - len(kept), kept
        paths += found
    inputs = len(paths) + sum(len(problems) for problems in problems_before.values())
    if scored is not None:
        _report_skipped(scored, skipped, inputs)
        if not inputs:
            return
    _continue_output(output, fmt, scored)
    boxes = _assign_face_boxes(face_boxes, paths)
    folders = [Path(given) for given in images if _is_folder(given)]
    crop_files = _match_face_crops(face_crops, folders, paths, face_detection=not no_face_detect)
    detector = Detector.open(engine_dir, backend=backend, batch_size=batch_size, face_detection=not no_face_detect,
                             face_min_px=face_min_px or None, gpu_preprocessing=not host_preprocessing,
                             cuda_graph_batch=cuda_graph_batch, face_cascade=not no_face_cascade,
                             max_pixels=max_pixels)
    click.echo(f"backend: {detector.backend_reason}", err=True)
    click.echo(f"preprocessing and vote: {detector.preprocessing}", err=True)
    if host_preprocessing and not detector.backend_has_fused_path:
        warn(f"--host-preprocessing has no effect: the {detector.backend.name} backend always "
             f"preprocesses on the host (the fused CUDA kernels are the tensorrt backend's)")
    click.echo(f"face localisation: {detector.face_localisation}", err=True)
    unused = _flags_given(click.get_current_context(), ("face_min_px", "no_face_cascade"))
    if unused and (detector.face_locator is None or "face" not in detector.streams):
        warn(f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect: no face is looked for "
             f"(face localisation {detector.face_localisation})")
    if detector.manifest.random_weights:
        warn("this engine set has RANDOM weights; its scores are meaningless.")
    if len(detector.streams) < len(STREAM_CHOICES):
        warn(f"this engine set has only the {', '.join(detector.streams)} stream(s); scores are their "
             "vote, not the paper's three-stream ensemble.")
    if "face" not in detector.streams and (face_crops is not None or face_boxes is not None):
        option = "--face-crops" if face_crops is not None else "--face-boxes"
        warn(f"{option} has no effect: this engine set has no face stream")
        crop_files = boxes = None  # nor a note per image on a crop or box it lacks
    rendered = io.StringIO(newline="")  # one CSV row at a time, so each is written whole or not at all
    writer = csv.DictWriter(rendered, fieldnames=_CSV_FIELDS) if fmt == "csv" else None

    def csv_text(write_row: Callable[[], object]) -> str:
        rendered.seek(0)
        rendered.truncate()
        write_row()
        return rendered.getvalue()

    if not output.continues_file:  # appended (>>) to a file with rows already, its header is there
        if writer:
            output.write(csv_text(writer.writeheader), counts=False)
        elif fmt == "table":
            output.write("image  score  (raw weighted mean)  stream P(fake)  face input\n", counts=False)
    omitted_notes = _notes_the_table_omits()

    engine_set = detector.manifest.raw[CONTENT_HASH_KEY]  # which set scored a row, for --skip-scored

    def emit(record: dict) -> None:
        if fmt == "table":
            output.write(_format_table_row(record, omitted_notes) + "\n")
            return
        record[ENGINE_SET_FIELD] = engine_set
        if fmt == "jsonl":
            output.write(json.dumps(record) + "\n")
        else:
            output.write(csv_text(lambda: writer.writerow(_csv_row(record))))

    def emit_problems_before(position: int) -> int:
        """Emit the failed inputs that came just before image ``position`` (in their place); how many."""
        problems = problems_before.get(position, [])
        for given, message in problems:
            emit({"image": given, "score": None, "raw_score": None, "streams": {}, "rounded_streams": {},
                  "face": None, "notes": [], "error": message})
        return len(problems)

    failed = 0
    # closed however the run ends, so that an error or an interruption starts a line of its own; SIGTERM
    # (timeout, a service manager) ends the run as Ctrl-C does: exit 130, every row written whole
    with termination_interrupts(), tqdm(total=len(paths), unit="img", file=sys.stderr,
                                        disable=len(paths) < 16) as progress:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            crops = [crop_files.get(path) for path in chunk] if crop_files is not None else None
            chunk_boxes = [boxes.get(path) for path in chunk] if boxes is not None else None
            for offset, detection in enumerate(detector.detect(chunk, face_crops=crops, face_boxes=chunk_boxes,
                                                               labels=chunk)):
                failed += emit_problems_before(start + offset)
                if crop_files is not None and crop_files.get(detection.image) is None and detection.ok:
                    looked_for = " and ".join(key.as_posix() for key in _crop_keys(detection.image, folders))
                    detection.notes.append(f"no face crop for this image in {face_crops} (looked for {looked_for})")
                if boxes is not None and detection.image not in boxes and detection.ok:
                    detection.notes.append(f"no face box for this image in {face_boxes}")
                failed += not detection.ok
                emit(detection.to_dict())
            progress.update(len(chunk))
        failed += emit_problems_before(len(paths))
    detector.close()
    if failed:
        click.echo(f"{failed} of {inputs} input(s) failed", err=True)
        sys.exit(2)


def _check_continuation(output: RowOutput, fmt: str, scored: ScoredImages | None) -> None:
    """Rows appended (>>) to a file must continue what it holds: a file they would not continue
    (the other format than the --skip-scored file's, a CSV with other columns, a last line cut short
    other than a resumed file's) is refused before the inputs are scanned, anything is scored or
    the file is touched (an older CSV was refused after "skipping N image(s)" had been said)."""
    resuming = scored is not None and output.writes_to(scored.path)
    if resuming and fmt != scored.format:
        raise click.UsageError(f"stdout appends to {scored.path}, a --format {scored.format} output; "
                               f"give --format {scored.format}")
    ends = output.appended_file_ends()
    if ends is None:
        return
    _refuse_other_rows(ends[0].removeprefix(codecs.BOM_UTF8).rstrip(b"\r"), fmt)
    if ends[1] != b"\n" and fmt != "table" and not resuming:
        raise DfdError("stdout appends to a file whose last line is cut short (a killed run?); the rows would "
                       "continue it: resume with --skip-scored FILE, which drops it, or write to a new file")


def _continue_output(output: RowOutput, fmt: str, scored: ScoredImages | None) -> None:
    """Make an appended file ready for the rows (checked by ``_check_continuation``): the
    --skip-scored file loses the cut-short last row of a killed run (its image is scored again),
    which the new rows continued into a line no later resume could read; a last row without its
    line end gets one."""
    if scored is not None and output.writes_to(scored.path):
        output.cut_to(scored.whole_rows_bytes)
    ends = output.appended_file_ends()
    if ends is not None and ends[1] != b"\n":
        output.write("\r\n" if fmt == "csv" and ends[1] != b"\r" else "\n", counts=False)  # or half of csv's \r\n


def _refuse_other_rows(first: bytes, fmt: str) -> None:
    """Refuse ``fmt`` rows appended to a file whose ``first`` line (without a byte-order mark or
    carriage return) begins something they would not continue."""
    header = ",".join(_CSV_FIELDS).encode()
    # an earlier dfd-export's CSV had fewer columns: still detect's rows, which table lines would break
    held = "csv" if first.startswith(f"{_CSV_FIELDS[0]},{_CSV_FIELDS[1]},".encode()) else \
        "jsonl" if first.startswith(b"{") else None
    if fmt == "table" and held:
        raise click.UsageError(f"stdout appends to a file of detect's --format {held} rows, which table lines would "
                               f"break; give --format {held} (and --skip-scored FILE to resume a killed run)")
    if fmt == "csv" and first != header:
        raise DfdError(f"stdout appends to a file that does not begin with detect's CSV header ({_CSV_FIELDS[0]},"
                       f"{_CSV_FIELDS[1]},...): the rows would not match its columns; write to a new file"
                       if held != "csv" else
                       f"stdout appends to detect CSV rows with other columns than this version writes (an earlier "
                       f"dfd-export's, without {ENGINE_SET_FIELD}?): the rows would not match them; write to a new file (with "
                       f"--skip-scored FILE > NEW.csv, the images FILE has not scored)")
    if fmt == "jsonl" and held != "jsonl":
        raise DfdError("stdout appends to a file that is not detect's jsonl output (its first line is not a JSON "
                       "object); write to a new file")


def _report_skipped(scored: ScoredImages, skipped: int, left: int) -> None:
    """Say on stderr what --skip-scored left out, and what is scored again."""
    again = []
    if scored.failed:
        again.append(f"{scored.failed} row(s) there are failures, whose images are tried again")
    if scored.cut_row:
        again.append("its last row was cut short (a killed run) and its image is scored again")
    click.echo(f"skipping {skipped} image(s) already scored in {scored.path}; {left} input(s) left"
               + (f" ({'; '.join(again)})" if again else ""), err=True)


def _check_face_min_px(value: float) -> float:
    """0 (off) or a size MTCNN looks for without upscaling the image (see SMALLEST_FACE_PX)."""
    from dfd.runtime.face_detection import SMALLEST_FACE_PX

    if 0 < value < SMALLEST_FACE_PX:
        raise click.BadParameter(f"{value:g} is below {SMALLEST_FACE_PX:g} px, MTCNN's smallest window: a smaller face "
                                 f"is found only in the image upscaled {SMALLEST_FACE_PX:g}/{value:g} times per side; "
                                 f"give 0 to turn the small-face pass off", param_hint="--face-min-px")
    return value


def _crop_keys(image: str, folders: list[Path]) -> list[Path]:
    """Where an image's crop may lie under --face-crops: its path relative to each folder argument
    holding it (``crops/sub/a.png`` for ``photos/sub/a.png`` of ``photos``), outermost folder first,
    so an image under nested folder arguments finds the same crop whatever their order; its name
    for an image given as a file."""
    keys = {Path(image).relative_to(folder) for folder in folders if Path(image).is_relative_to(folder)}
    return sorted(keys, key=lambda key: (-len(key.parts), key)) or [Path(Path(image).name)]


def _match_face_crops(face_crops: Path | None, folders: list[Path], paths: list[str],
                      face_detection: bool) -> dict[str, str | None] | None:
    """Each image's face-crop file (None where it has none), without --face-crops None. A crop is
    looked for at the image's relative paths (``_crop_keys``), then, as the reference's flat crops
    folder holds them, at its bare file name when no other image without a crop of its own has
    that name. A crop that several different images would take (one relative path under two
    folder arguments, or a bare name shared that way) would give them all one face, so that is
    refused, naming them; one image listed twice is one image. Images left without a crop (the
    face detector looks for their faces, or they use the original image) are counted in a
    warning: a wrong folder or suffix would otherwise go unnoticed."""
    if face_crops is None:
        return None
    nested: dict[str, Path] = {}
    own: set[str] = set()  # the images with a crop at one of their relative paths
    for path in paths:
        places = [face_crops / key for key in _crop_keys(path, folders)]
        found = next((place for place in places if _is_file(place)), None)
        nested[path] = found or places[0]
        if found is not None:
            own.add(path)
    same_name: dict[str, set[str]] = {}  # bare name -> the distinct images without a nested crop
    for path in paths:
        if path not in own:
            same_name.setdefault(Path(path).name, set()).add(os.path.realpath(path))
    chosen: dict[str, Path | None] = {}
    takers: dict[Path, set[str]] = {}  # crop file -> the distinct images that would take it
    for path in paths:
        flat = face_crops / Path(path).name
        crop = nested[path] if path in own else flat if _is_file(flat) else None
        chosen[path] = crop
        if crop is not None:
            takers.setdefault(crop, set()).add(os.path.realpath(path))
            if crop != nested[path]:  # the flat fallback: every image of that name could claim it
                takers[crop] |= same_name[crop.name]
    for path, crop in chosen.items():
        if crop is not None and len(takers[crop]) > 1:
            sharing = sorted(p for p in paths if os.path.realpath(p) in takers[crop])
            raise click.UsageError(
                f"--face-crops: {crop} is the only crop for {len(takers[crop])} images named {crop.name} "
                f"({first_few(sharing)}); put each image's crop at its path relative to its folder under "
                f"{face_crops}, and score folders whose images share relative paths in separate runs")
    missing = sorted({path for path, crop in chosen.items() if crop is None})
    if missing:
        warn(f"{len(missing)} of {len(set(paths))} image(s) have no crop in {face_crops} (looked for at their path "
             f"relative to their folder, then at their file name); "
             + ("the face detector looks for their faces: " if face_detection
                else "they use the original image (--no-face-detect): ") + first_few(missing))
    return {path: None if crop is None else str(crop) for path, crop in chosen.items()}


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the file system refuses (too long) is none, not an error."""
    try:
        return path.is_file()
    except OSError:
        return False


def _assign_face_boxes(face_boxes: Path | None, paths: list[str]) -> dict | None:
    """The boxes of ``--face-boxes`` per image path (None without the option); entries that match
    no image are reported on stderr (a typo there would otherwise silently send that image to the
    face detector)."""
    if face_boxes is None:
        return None
    from dfd.runtime.face_boxes import load_face_boxes

    loaded = load_face_boxes(face_boxes)
    if not loaded.boxes:
        warn(f"{face_boxes} holds no face boxes")
    assigned, unused = loaded.assign(paths)
    if unused and not assigned and paths:
        # every image would silently go to the face detector instead: almost surely the wrong file,
        # or paths written where another folder spells them differently
        raise DfdError(f"none of the {len(unused)} face box(es) in {face_boxes} matches an image given "
                       f"(the first: {unused[0]!r}); give the images as the boxes file names them")
    if unused:
        warn(f"{len(unused)} face box(es) in {face_boxes} match no image given: {first_few([repr(k) for k in unused])}")
    return assigned


def _register_external_commands() -> None:
    """Verbs that live beside their implementation (their modules import nothing heavy at load)."""
    from .bench.cli import bench
    from .capi_build import capi

    main.add_command(bench)
    main.add_command(capi)


_register_external_commands()


if __name__ == "__main__":
    main()

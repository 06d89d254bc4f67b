"""The ``dfd-export`` command line.

Every verb imports its heavy machinery lazily, so ``detect``/``inspect``/``doctor`` never load
torch, and ``--help`` is instant. The group and build, inspect, doctor and verify are here; the
other verbs live in modules of their own (``detect_cli``, ``degrade_cli``, ``bench.cli``,
``capi_build``). Parameter types and option groups shared by several verbs are defined once in
``cli_types`` (Polygraphy-style argument groups). Known failures print one ``error:`` line and exit 1; a
traceback means a bug.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import click

from dfd.runtime.decoder_messages import capturing_decoder_messages
from dfd.runtime.errors import DfdError
from dfd.runtime.images import silence_opencv_log
from dfd.runtime.vote import STREAMS as STREAM_CHOICES

from .cli_errors import (colour, echo_error, fail_interrupted, handles_errors, printable, require_stdout,
                         steady_standard_streams, termination_interrupts, warn)
from .cli_types import DEGRADING_MEMORY, FiniteFloatRange, GivenPath, OutputFolder, Verb, engine_dir_argument, \
    files_a_run_reads, flags_given, is_stdout, max_pixels_option, prepare_output_file, same_file, write_output_file
from .onnx_files import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET


def streams_option(func: Callable) -> Callable:
    """``--streams``, shared by the verbs that build or compare a subset of the three streams."""
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
            _show_usage_error(exc)
            sys.exit(1)
        except click.Abort:  # an interrupt while click read the arguments: no prompt here reads stdin
            fail_interrupted()


def _show_usage_error(exc: click.ClickException) -> None:
    """click's usage block and hint, then the message as every other error line: click's own
    "Error:" line was the one failure ``grep '^error:'`` missed, and showed a name's undecodable
    bytes as U+FFFD."""
    if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # no verb: the help is the answer
        exc.show()
        return
    context = exc.ctx if isinstance(exc, click.UsageError) else None
    if context is not None:
        hint = ""
        if context.command.get_help_option(context) is not None:
            option = max(context.command.get_help_option_names(context), key=len)
            hint = f"Try '{context.command_path} {option}' for help.\n"
        click.echo(f"{context.get_usage()}\n{hint}", err=True)
    echo_error(exc.format_message())


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
    steady_standard_streams()
    context = click.get_current_context()
    # SIGTERM and SIGHUP end any verb as Ctrl-C does (exit 130), from its first line to its last
    context.with_resource(termination_interrupts())
    if hasattr(sys.stdout, "reconfigure"):
        # a name the locale's encoding cannot show (an "ü" under LANG=C or PYTHONIOENCODING=ascii) is
        # written as an escape: it was a UnicodeEncodeError traceback, and the rows after it lost
        sys.stdout.reconfigure(errors="backslashreplace")
    silence_opencv_log()  # every verb reports an unreadable image itself
    # and what libjpeg/libpng print about one becomes its note or error, for this command only
    context.with_resource(capturing_decoder_messages())


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
              "TensorRT engines for this GPU (needs TensorRT and a GPU; written to TensorRT's documented API "
              "but never executed by this project, see the README). auto: tensorrt when possible.")
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
    unused = flags_given(context, _TENSORRT_ONLY_OPTIONS)
    if backend == "onnxruntime" and unused:
        warn(f"{', '.join(unused)} only shape{'s' if len(unused) == 1 else ''} TensorRT engines, and --backend "
             "onnxruntime builds none "
             "(its ONNX graphs take any batch size); pass --backend tensorrt or auto to build engines")
    unused = flags_given(context, _CALIBRATION_OPTIONS)
    if precision == "fp32" and unused:
        warn(f"{', '.join(unused)} only shape{'s' if len(unused) == 1 else ''} the calibration of fp16 and int8 "
             "graphs, and an fp32 build has "
             "none; pass --precision fp16 or int8 to use them")
    elif precision == "fp16" and "--calib-method" in unused:
        warn("--calib-method only chooses INT8 activation ranges; an fp16 build uses its calibration set to find "
             "the values out of fp16's range, whatever the method")
    unused = flags_given(context, ("lora_r", "lora_alpha"))
    if weights_dir is None and unused:
        warn(f"{', '.join(unused)} describe the adapters of the checkpoints in --weights-dir, and without it the "
             "streams are random")
    if weights_dir is not None and flags_given(context, ("seed",)):
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
    manifest = build_engine_set(request, warn=warn)
    click.echo(printable(f"engine set written: {manifest.parent}"))
    if replaces_cwd:
        click.echo("note: the set replaced the folder this shell is in; run `cd .` to see its files", err=True)


_TENSORRT_ONLY_OPTIONS = ("min_batch", "opt_batch", "max_batch", "workspace_gib", "version_compatible",
                          "hardware_compatibility")
_CALIBRATION_OPTIONS = ("calib_dir", "calib_count", "calib_degrade", "calib_method", "calib_seed", "calib_cache",
                        "max_pixels")


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

    from dfd.runtime.manifest import CONTENT_HASH_KEY, EngineSetError, load_manifest, verify_files

    require_stdout()
    try:
        manifest = load_manifest(engine_dir, verify=False)
        verify_files(manifest, hashes=not no_verify)
    except EngineSetError as exc:  # the verdict, not a failure to give one: a script tells them apart
        echo_error(str(exc))
        sys.exit(3)
    if as_json:
        click.echo(json.dumps(manifest.raw, indent=2))
        return
    raw = manifest.raw
    click.echo(printable(f"engine set   {manifest.root}"))
    versions = raw.get("tool_versions")  # the trains side's record, not checked to run: shown as it is
    built_by = versions.get("dfd-export", "?") if isinstance(versions, dict) else "?"
    click.echo(printable(f"created      {raw.get('created_utc', '?')}  by dfd-export {built_by}"))
    if manifest.random_weights:
        click.secho("weights      RANDOM (demo/benchmark set; scores are meaningless)", fg="yellow", color=colour())
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
    click.echo(f"content      sha256 {raw[CONTENT_HASH_KEY]}  (detect rows' engine_set)")
    click.echo("")
    click.echo(f"{'stream':8} {'input':>9} {'precision':>9} {'backend':>12} {'size':>10}  files")
    for name, stream in manifest.streams.items():
        size = sum(f.bytes for f in stream.files)
        files = ", ".join(f.path for f in stream.files)
        click.echo(printable(f"{name:8} {stream.input_size:>4}x{stream.input_size:<4} {stream.precision:>9} "
                             f"{stream.backend:>12} {size / 1e6:>8.1f}MB  {files}"))
    _echo_face_localisers(manifest.face_detector)
    _echo_calibration(raw.get("calibration"))


def _echo_calibration(entry: object) -> None:
    """What an fp16/INT8 set was calibrated on, in brief (``--json`` prints each slot)."""
    from dfd.calibration.calibset import SOURCE_PIXELS_KEY

    if not isinstance(entry, dict):  # an fp32 set has none
        return
    click.echo("")
    photographs = entry.get(SOURCE_PIXELS_KEY)
    drawn = f" from {len(photographs)} distinct photograph(s)" if isinstance(photographs, list) else ""
    click.echo(printable(f"calibration  {entry.get('count', '?')} slots{drawn} in {entry.get('source', '?')}, "
                         f"{entry.get('degraded_count', '?')} degraded (seed {entry.get('seed', '?')})"))
    unreadable = entry.get("unreadable_images") or []
    slots = entry.get("slots")
    noted = sum(bool(slot.get("notes")) for slot in slots if isinstance(slot, dict)) if isinstance(slots, list) else 0
    remarks = ([f"{len(unreadable)} unreadable image(s) replaced"] if unreadable else []) + (
        [f"{noted} slot(s) preprocessed by a documented rule (e.g. upscaled)"] if noted else [])
    click.echo(f"             data sha256 {entry.get('sha256', '?')}" + (f"; {'; '.join(remarks)}" if remarks else ""))


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
    cuda = report["cuda"]
    click.echo(f"cuda         driver {cuda.get('driver_version') or 'none'}  "
               f"runtime {cuda.get('runtime_version') or 'none'}")
    click.echo(f"gpu          {gpu.get('name') + ' (' + gpu.get('arch', '?') + ')' if gpu.get('available') else gpu.get('reason')}")
    click.echo(f"tensorrt     {trt.get('version') if trt.get('available') else trt.get('reason')}")
    click.echo(f"nvrtc        {kernels.get('nvrtc_version') or '-'}  "
               + "  ".join(f"{arch}: {state}" for arch, state in (kernels.get("ptx") or {}).items()))
    engine = report.get("engine_set")
    if engine:
        click.echo(printable(f"engine set   {engine['path']}" + (f": {engine['error']}" if engine["error"] else "")))
        for name, stream in (engine.get("streams") or {}).items():
            state = "runnable" if stream.get("runnable") else f"not runnable: {stream.get('reason')}"
            click.echo(f"  {name:7} {stream.get('precision')} {stream.get('backend')}  {state}")
    sys.exit(0 if runs_as_built else 3)


def _thresholds_text(thresholds: dict) -> str:
    """verify's thresholds in the words of its options and the README."""
    from .verify import limit_as_typed, share_as_typed

    return (f"max |dP| {limit_as_typed(thresholds['max_abs_dp'])}, mean |dP| {limit_as_typed(thresholds['mean_dp'])}, "
            f"vote agreement >= {share_as_typed(thresholds['min_vote_agreement'])} on "
            f"{thresholds['min_vote_agreement_applies_to']}, a vote moves at most {thresholds['max_vote_change']:g}, "
            f"non-finite probability: {thresholds['non_finite']}, unreadable inputs: {thresholds['unreadable_inputs']}")


def _largest_deltas(streams: dict) -> str:
    """A condition's largest max and mean |dP| and their streams: what its own rules judge."""
    if not streams:
        return ""
    by_max = max(streams, key=lambda s: streams[s]["max_abs_dp"])
    by_mean = max(streams, key=lambda s: streams[s]["mean_abs_dp"])
    return (f"; max |dP| {streams[by_max]['max_abs_dp']:.2e} ({by_max}), mean |dP| up to "
            f"{streams[by_mean]['mean_abs_dp']:.2e} ({by_mean})")


def _print_verification(report, engine_dir: Path, to_stderr: bool) -> None:
    """verify's report as text: the measurements and verdict on stdout (on stderr with
    ``to_stderr``: the JSON report goes to stdout), the images left out and the failed rules on
    stderr."""
    from .verify import lower_bound_text, share_text

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
    several_conditions = len(report.per_condition) > 1
    pooled = "   (all conditions pooled; each is judged on its own, below)" if several_conditions else ""
    for stream, values in report.streams.items():
        echo(f"  {stream:7} max |dP| {values['max_abs_dp']:.2e}   mean |dP| {values['mean_abs_dp']:.2e}{pooled}")
        pooled = ""
    width = max(map(len, report.per_condition), default=0)  # paper_compound is the longest name
    for condition, values in report.per_condition.items():
        measured = (f"vote agreement {share_text(values['vote_agreement'])} over {values['images']} image(s), {level} "
                    f"{lower_bound_text(values['vote_agreement_lower_bound'])}" if values["images"]
                    else "no image could be compared")
        echo(f"  {condition:{width}} {measured}{_largest_deltas(values['streams']) if several_conditions else ''}")
    echo(printable(f"  vote agreement {share_text(report.vote_agreement, 2)} "
                   f"({level} {lower_bound_text(report.vote_agreement_lower_bound)}, "
                   f"{report.confidence['method']}); changed: "
                   + (", ".join(f"{c['image']} ({c['reference']} -> {c['engine']})" for c in report.changed_votes)
                      or "none")))
    if report.non_finite:
        echo(printable("  no probability (NaN/inf, each counted as a changed vote): " + ", ".join(
            f"{c['image']} ({', '.join(c['streams'])})" for c in report.non_finite)))
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

    if json_out is None or is_stdout(json_out):  # a report file keeps the results without one
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
    report = verify_engine_set(engine_dir, images_dir, degrade, weights_dir, thresholds, backend, max_pixels, strict)
    report_error = None  # the report is written first: a stdout that fails must not lose it
    if json_out:
        text = json.dumps(report.to_dict(), indent=2).encode()
        try:
            write_output_file(json_out, lambda file: file.write(text))
        except DfdError as exc:
            report_error = exc
    _print_verification(report, engine_dir, to_stderr=is_stdout(json_out) or sys.stdout is None)
    if report_error is not None:
        if report.passed:
            raise report_error
        # the verdict is known and printed: a script must still read "failed" (3), not "error" (1)
        echo_error(str(report_error))
    if not report.passed:
        sys.exit(3)


def _register_external_commands() -> None:
    """Verbs that live beside their implementation (their modules import nothing heavy at load)."""
    from .bench.cli import bench
    from .capi_build import capi
    from .degrade_cli import degrade
    from .detect_cli import detect

    for command in (bench, capi, degrade, detect):
        main.add_command(command)


_register_external_commands()


if __name__ == "__main__":
    main()

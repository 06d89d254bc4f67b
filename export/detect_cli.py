"""``dfd-export detect``: score images with an engine set, as a table, jsonl or csv rows; resume
an interrupted run (``detect_resume``); take face crops or boxes given with the images."""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from dfd.runtime.errors import DfdError, first_few
from dfd.runtime.face_boxes import BOX_COLUMNS
from dfd.runtime.preparation import MAX_DEFAULT_WORKERS, default_prepare_workers
from dfd.runtime.vote import STREAMS as STREAM_CHOICES

from .cli_errors import handles_errors, printable, require_stdout, warn
from .cli_types import FiniteFloatRange, GivenPath, RowOutput, Verb, engine_dir_argument, flags_given, \
    max_pixels_option
from .detect_resume import ENGINE_SET_FIELD, ScoredImages, check_engine_set, load_scored_images, refuse_stdout_over
from .image_arguments import expand_inputs, is_folder


# x1..y2: the face box the face stream was cropped on, so the output is also a --face-boxes file
_CSV_FIELDS = ("image", "score", "raw_score", "global", "face", "fusion", "face_source", "face_used", *BOX_COLUMNS,
               "error", "notes", ENGINE_SET_FIELD)


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


@click.command(cls=Verb)
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
                   "pixels of the image; image is its path as listed here, another path to the same file, or its "
                   "file name where that names one image only. The runtime crops "
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
@click.option("--prepare-workers", type=click.IntRange(min=1), default=None,
              help=f"Threads that decode, localise faces and preprocess images, the next batch while the engines "
                   f"score this one [default: one per core, at most {MAX_DEFAULT_WORKERS}; here "
                   f"{default_prepare_workers()}]. 1: one image at a time between batches. Scores are the same "
                   f"whatever the number; images being prepared at once share the --max-pixels budget. An "
                   f"interrupt waits for the images being prepared.")
@handles_errors
def detect(engine_dir, images, face_crops, face_boxes, fmt, batch_size, backend, recursive, no_face_detect, face_min_px,
           no_face_cascade, host_preprocessing, cuda_graph_batch, skip_scored, max_pixels, prepare_workers):
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

    from dfd.runtime.detector import Detector
    from dfd.runtime.manifest import CONTENT_HASH_KEY, load_manifest, verify_files
    from dfd.runtime.progress import bars_paused_for, progress_bar

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
    # a folder that is no set, or an edited manifest, fails before any folder is listed or row read
    manifest = load_manifest(engine_dir, verify=False)
    verify_files(manifest, hashes=False)  # the digest and sizes; the hashes when the set is opened
    scored = None
    if skip_scored is not None:
        refuse_stdout_over(skip_scored)
        scored = load_scored_images(skip_scored)
    _check_continuation(output, fmt, scored)
    if scored is not None:
        unchecked = check_engine_set(scored, manifest.raw[CONTENT_HASH_KEY], engine_dir)  # as its rows name it
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
    folders = [Path(given) for given in images if is_folder(given)]
    crop_files = _match_face_crops(face_crops, folders, paths, face_detection=not no_face_detect)
    detector = Detector.open(engine_dir, backend=backend, batch_size=batch_size, face_detection=not no_face_detect,
                             face_min_px=face_min_px or None, gpu_preprocessing=not host_preprocessing,
                             cuda_graph_batch=cuda_graph_batch, face_cascade=not no_face_cascade,
                             max_pixels=max_pixels, prepare_workers=prepare_workers)
    click.echo(f"backend: {detector.backend_reason}", err=True)
    click.echo(f"preprocessing and vote: {detector.preprocessing}", err=True)
    if host_preprocessing and not detector.backend_has_fused_path:
        warn(f"--host-preprocessing has no effect: the {detector.backend.name} backend always "
             f"preprocesses on the host (the fused CUDA kernels are the tensorrt backend's)")
    click.echo(f"face localisation: {detector.face_localisation}", err=True)
    unused = flags_given(click.get_current_context(), ("face_min_px", "no_face_cascade"))
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
            row = _format_table_row(record, omitted_notes) + "\n"
        else:
            record[ENGINE_SET_FIELD] = engine_set
            row = json.dumps(record) + "\n" if fmt == "jsonl" else csv_text(lambda: writer.writerow(_csv_row(record)))
        with bars_paused_for(sys.stdout):
            output.write(row)

    def emit_problems_before(position: int) -> int:
        """Emit the failed inputs that came just before image ``position`` (in their place); how many."""
        problems = problems_before.get(position, [])
        for given, message in problems:
            emit({"image": given, "score": None, "raw_score": None, "streams": {}, "rounded_streams": {},
                  "face": None, "notes": [], "error": message})
        return len(problems)

    failed = 0
    # closed however the run ends, so that an error or an interruption (Ctrl-C, SIGTERM, SIGHUP: exit
    # 130, every row written whole) starts a line of its own
    crops = [crop_files.get(path) for path in paths] if crop_files is not None else None
    path_boxes = [boxes.get(path) for path in paths] if boxes is not None else None
    # one call for the whole run, so the next batch is prepared while this one is scored
    scored = detector.detections(paths, face_crops=crops, face_boxes=path_boxes, labels=paths)
    try:
        with progress_bar(total=len(paths), desc="detect", unit="img", disable=len(paths) < 16) as progress:
            for position, detection in enumerate(scored):
                failed += emit_problems_before(position)
                if crop_files is not None and crop_files.get(detection.image) is None and detection.ok:
                    looked_for = " and ".join(key.as_posix() for key in _crop_keys(detection.image, folders))
                    detection.notes.append(f"no face crop for this image in {face_crops} (looked for {looked_for})")
                if boxes is not None and detection.image not in boxes and detection.ok:
                    detection.notes.append(f"no face box for this image in {face_boxes}")
                failed += not detection.ok
                emit(detection.to_dict())
                progress.update(1)
            failed += emit_problems_before(len(paths))
    finally:  # on an error or an interrupt too: the images being prepared are waited for here
        scored.close()
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
    if held and fmt != held:
        raise click.UsageError(f"stdout appends to a file of detect's --format {held} rows, which {fmt} "
                               f"{'lines' if fmt == 'table' else 'rows'} would break; give --format {held} (and "
                               f"--skip-scored FILE to resume a killed run)")
    if fmt == "csv" and first != header:
        raise DfdError(f"stdout appends to a file that does not begin with detect's CSV header ({_CSV_FIELDS[0]},"
                       f"{_CSV_FIELDS[1]},...): the rows would not match its columns; write to a new file"
                       if held != "csv" else
                       f"stdout appends to detect CSV rows with other columns than this version writes (an earlier "
                       f"dfd-export's, without {ENGINE_SET_FIELD}?): the rows would not match them; write to a new "
                       f"file (with --skip-scored FILE > NEW.csv, the images FILE has not scored)")
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
    click.echo(printable(f"skipping {skipped} image(s) already scored in {scored.path}; {left} input(s) left"
                         + (f" ({'; '.join(again)})" if again else "")), err=True)


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

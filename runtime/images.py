"""Image decoding that reproduces the reference's `cv2.imread(path)` + BGR->RGB, safely.

The reference decodes every image with `cv2.imread(path)` (IMREAD_COLOR: 8-bit, 3 channels,
EXIF orientation applied) and converts BGR to RGB. `decode_image` computes exactly that, with
`cv2.imdecode` on bytes read in Python (so non-ASCII paths work on every platform; OpenCV applies
the same decoder and the same EXIF rotation to a buffer as to a file, except that OpenCV 4.14's
`imread` fails on a TIFF with an EXIF orientation, which is decoded here rotated, as from memory),
and adds what the reference lacks:

* clear `ImageError`s instead of `None` (missing file, broken link, directory, named pipe or
  device, empty file, not an image, corrupt or truncated data, zero-sized image);
* human-readable notes on the conversions OpenCV's IMREAD_COLOR silently applies (grayscale
  expanded, alpha dropped, 16-bit reduced, CMYK converted, EXIF rotation). The original kind is
  read from the file header (:mod:`dfd.runtime.image_headers`: PNG IHDR, JPEG SOF/Adobe/EXIF, BMP info header, WebP VP8/VP8L/VP8X,
  the GIF blocks before the second frame), with no second decode. Formats whose colour layout this
  module does not parse (TIFF, PNM, JPEG 2000, Sun raster, Radiance HDR, ...) are decoded plainly and
  described by a second IMREAD_UNCHANGED decode only when the image is small (at most
  `UNCHANGED_PROBE_MAX_PIXELS`), so the description never doubles the cost of a large decode;
* what libjpeg and libpng print about the image, as a note or in the error, where the program
  captures it (`decoder_messages`: the CLI does);
* memory safety: the header gives the size before anything is allocated (PNG, JPEG, BMP, WebP,
  TIFF, PNM/PAM/PFM, GIF and JPEG 2000: every format `dfd-export detect` takes from a folder; and
  AVIF/HEIF, Sun raster and Radiance HDR, the other formats OpenCV decodes by default). An image
  larger than `max_pixels` (default `DEFAULT_MAX_PIXELS` = 64 MP, i.e. 192 MB of RGB, well above
  any camera photo the detector is meant for) is never decoded at full size. JPEG
  is decoded reduced by 1/2, 1/4 or 1/8 (`IMREAD_REDUCED_COLOR_*`: libjpeg scales inside its IDCT,
  so the full image never exists in memory) and the note says so; a progressive JPEG only while
  the coefficients libjpeg holds for its whole image fit the limit (`_choose_decode_flag`). Every
  other format is refused:
  OpenCV implements IMREAD_REDUCED_* for them by decoding the full image and resizing it afterwards
  (measured: a 20000x20000 PNG read with IMREAD_REDUCED_COLOR_8 peaks at +1.17 GB), which is
  exactly the allocation the limit exists to prevent. A file whose header cannot be read (an
  unknown format, a damaged header) is bounded while decoding only by OpenCV's own limit
  (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30 pixels by default) and refused after it when above
  `max_pixels`, so the limit holds for what follows (face localisation, resizing) in every format;
  an image above OpenCV's limit is an `ImageError` like any other undecodable file.

Truncated data: ``cv2.imread`` decodes a JPEG that ends early (libjpeg's file reader supplies an
end-of-image marker at every read past the end, and the missing part comes out grey), while
``cv2.imdecode`` refuses the same bytes since OpenCV 4.10 (its memory reader has no such stand-in).
A JPEG that fails to decode is therefore decoded again with end-of-image markers appended, enough
for the longest segment a read can be inside of, which gives imread's pixels (checked at every
cut point of baseline, progressive, restart-interval, grayscale and APP-segment JPEGs). A PNG
that ends early is refused, as imread refuses it. The header walk detects truncation (JPEG: no
end-of-image marker after the last scan; PNG: no IEND chunk; BMP/WebP: shorter than the size the
header declares), so a refusal names the cause and an accepted partial image carries a note. A
JPEG whose end marker follows a cut scan looks complete to the walk; where an edge of it decodes
to the decoder's flat grey, a second decode with bytes before that marker tells (see
``_scan_cut_short_before_its_end_marker``).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass

import cv2
import numpy as np

from .decoder_messages import decoder_messages, decoder_messages_captured
from .errors import DfdError
from .image_headers import (EXTRANEOUS_NOTE, JP2_CODESTREAM, JP2_SIGNATURE, RADIANCE_SIGNATURES, SUN_RASTER_MAGIC,
                            ImageHeader, read_header)

DEFAULT_MAX_PIXELS = 64_000_000
UNCHANGED_PROBE_MAX_PIXELS = 4_000_000

_REDUCED_JPEG_FLAGS = ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                       (8, cv2.IMREAD_REDUCED_COLOR_8))
# What libjpeg's file reader (cv2.imread) reads past the end of a JPEG: an end-of-image marker at
# every read. A read can be inside a marker segment (at most 65,535 bytes), which it then skips
# through those markers, so this many cover the rest of any segment and the marker after it.
_JPEG_END_AS_IMREAD_READS_IT = b"\xff\xd9" * 32_784


class ImageError(DfdError, ValueError):
    """An image that cannot be used, with a message that names the image and the problem."""


MAX_ENCODED_BYTES = 2**31 - 1  # OpenCV's imdecode takes a buffer of at most INT_MAX bytes
_OVER_ENCODED_LIMIT = f"is over the {MAX_ENCODED_BYTES:,} bytes OpenCV can decode from one buffer"


class ImageFileError(ImageError):
    """An image file that cannot be read at all (missing, not a regular file, no permission, an
    I/O error): a problem of the file, not of its content (the C ABI's DFD_E_IO)."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # uint8 HxWx3 RGB, C-contiguous
    notes: tuple[str, ...]  # conversions applied, human-readable
    # A JPEG decoded reduced: file pixels per decoded pixel (1, 2, 4 or 8), and the (height,
    # width) of the full-size image `cv2.imread` gives, in whose pixels face boxes are given
    reduction: int = 1
    full_hw: tuple[int, int] | None = None

    @property
    def full_size_hw(self) -> tuple[int, int]:
        """(height, width) of the image as the reference decodes it, whatever this decode's size."""
        return self.full_hw or self.rgb.shape[:2]


_RAISE_LIMIT = ("raise the limit (--max-pixels of the dfd-export command, max_pixels of Detector.open or "
                "dfd_options) if this machine can afford it")


def decode_image(source: str | os.PathLike | bytes | np.ndarray, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a file path, encoded bytes or a pixel array into uint8 RGB, as the reference does.

    Paths and bytes give exactly `cv2.imread(path)` converted BGR->RGB (reduced by 1/2, 1/4 or
    1/8 for JPEGs above `max_pixels`, see the module docstring). A numpy array is taken as
    already decoded pixels: uint8 HxWx3 is RGB (returned as is, C-contiguous, possibly sharing
    memory with the input), uint8 HxW or HxWx1 gray is expanded to RGB and uint8 HxWx4 RGBA loses its alpha
    channel, both with a note; anything else is refused.
    """
    _check_max_pixels(max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _decode_bytes(read_image_file(source), _file_label(source), max_pixels)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise ImageError(f"cannot decode an image from {_what_to_pass_instead(source)}")
    size = source.nbytes if isinstance(source, memoryview) else len(source)  # len() counts a view's items
    if size > MAX_ENCODED_BYTES:  # before bytes() copies it
        raise ImageError(f"image bytes ({size:,} bytes) {_OVER_ENCODED_LIMIT}")
    data = bytes(source)
    if not data:
        raise ImageError("image bytes are empty (0 bytes)")
    try:
        return _decode_bytes(data, f"image bytes ({len(data)} bytes)", max_pixels)
    except ImageError as error:
        raise ImageError(f"{error}{_path_hint(data)}") from None


def decode_image_file(path: str | os.PathLike, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[DecodedImage, str]:
    """`decode_image` of a file, and the sha256 of the very bytes decoded.

    Why: a caller that records which file a result came from (``degrade``'s record, which a
    resume checks the image against) must hash what it decoded; hashing the file in a second
    read would record the new bytes of an image replaced in between with a result made from the
    old ones, and reads every image twice."""
    _check_max_pixels(max_pixels)
    data = read_image_file(path)
    return _decode_bytes(data, _file_label(path), max_pixels), hashlib.sha256(data).hexdigest()


def _check_max_pixels(max_pixels: object) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def _path_hint(data: bytes) -> str:
    """Bytes are encoded image data; when they fail to decode and name an existing file, the
    caller most likely meant a path (os.fsencode'd, or read from a bytes-mode listing). A NUL byte
    or a name too long for the system makes ``os.path.exists`` False, not an error."""
    named = len(data) < 4096 and os.path.exists(data)
    return "; these bytes name an existing file: pass a path as str or Path" if named else ""


def silence_opencv_log() -> None:
    """Stop OpenCV writing its own log lines to stderr, for a whole process.

    `decode_image` turns every image OpenCV cannot read into an `ImageError` that names the file and
    the cause, so OpenCV's lines ("[ERROR:0@1.1] global grfmt_png.cpp:297 readHeader IHDR chunk
    shall be first") only repeat it, without the file name, and break into the progress bar. The
    level is process-wide state, so the entry points that own their process's stderr call this
    (the CLI and the C library); the Python API leaves it to the application."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def check_rgb_image(rgb: object, user: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``rgb`` is a non-empty uint8 [H, W, 3] array; ``user`` names what
    needs it (the face localisers take decoded images from the caller, not files)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        description = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise error(f"{user} needs an RGB uint8 image [H, W, 3], got {description}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise error(f"{user} got an empty image of shape {rgb.shape}")


def array_sha256(array: np.ndarray) -> str:
    """Content hash of an array: its dtype, shape and bytes. Of a decoded image, it names the
    pixels whatever file, name or format they came from; calibration records it, ``verify`` uses
    it to spot calibration images, and the degradation engine seeds each image's draw with it."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _what_to_pass_instead(source: object) -> str:
    """An object decode_image cannot take, and the fix for the usual ones."""
    generic = "pass a file path, encoded image bytes or a uint8 numpy array"
    if source is None:
        return f"None (what cv2.imread returns for a file it cannot read): {generic}"
    kind = f"an object of type {type(source).__name__}"
    if hasattr(source, "__array_interface__") or hasattr(source, "__array__"):  # a PIL image, a tensor
        return f"{kind}: convert it with np.asarray(...) to uint8 RGB pixels, or {generic}"
    if hasattr(source, "getvalue") or hasattr(source, "read"):  # io.BytesIO, an open file
        return f"{kind}: pass its bytes (.getvalue() or .read()), or {generic}"
    return f"{kind}: {generic}"


def _file_label(path: str | os.PathLike) -> str:
    """A path quoted for a message; with its control characters escaped (a NUL, a line break),
    which would otherwise cut or forge the message's line."""
    name = os.fsdecode(path)
    return f"'{name}'" if name.isprintable() else repr(name)


_SPECIAL_FILES = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def unreadable_file_reason(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be read as an image file, or None: missing (a broken
    symbolic link named as one), not searchable, a folder, not a regular file, or not readable.
    Only regular files are read: reading a named pipe blocks until a writer comes, and a device
    such as /dev/zero never ends. The C ABI reports these as input/output errors."""
    label = _file_label(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"image file {label} is a broken symbolic link (to {os.readlink(path)})"
        return f"image file {label} does not exist"
    except OSError as error:  # a symbolic-link loop, a name too long, a folder we may not search
        return f"cannot read image file {label}: {error.strerror or error}"
    except ValueError:  # our words: Python 3.13 says "stat: embedded null character in path", 3.11 "embedded null byte"
        return f"cannot read image file {label}: its name holds a NUL character, which no file name may hold"
    if stat.S_ISDIR(mode):
        return f"{label} is a directory, not an image file"
    for is_kind, kind in _SPECIAL_FILES:
        if is_kind(mode):
            return f"{label} is a {kind}, not an image file; only regular files are read"
    if not os.access(path, os.R_OK):
        return f"cannot read image file {label}: permission denied"
    return None


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, or an ``ImageFileError`` that says why not (see
    ``unreadable_file_reason``; an empty file, or one over ``MAX_ENCODED_BYTES``, is an
    ``ImageError``). Callers that hash image files use it too, so they refuse the same files."""
    label = _file_label(path)
    reason = unreadable_file_reason(path)
    if reason:
        raise ImageFileError(reason)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_ENCODED_BYTES:  # refused before reading gigabytes OpenCV would refuse
                raise ImageError(f"image file {label} ({size:,} bytes) {_OVER_ENCODED_LIMIT}")
            data = handle.read()
    except FileNotFoundError:
        raise ImageFileError(f"image file {label} does not exist") from None
    except PermissionError:
        raise ImageFileError(f"cannot read image file {label}: permission denied") from None
    except OSError as error:
        raise ImageFileError(f"cannot read image file {label}: {error.strerror or error}") from None
    if not data:
        raise ImageError(f"image file {label} is empty (0 bytes)")
    return data


def _decode_bytes(data: bytes, label: str, max_pixels: int) -> DecodedImage:
    header = read_header(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if header is None:
        bgr, ended_early, said = _imdecode_as_imread(data, buffer, cv2.IMREAD_COLOR, label)
        if bgr is None:
            raise ImageError(f"{label} is not an image OpenCV can decode "
                             f"(unrecognised format, or corrupt data){_in_parentheses(said)}")
        _require_nonempty(bgr.shape[0], bgr.shape[1], label)
        _require_within_limit_after_decoding(bgr, label, max_pixels)
        notes = _describe_by_unchanged_decode(buffer, bgr.shape[0] * bgr.shape[1], label)
        if ended_early:
            notes += (f"JPEG data ends early: {_what_was_filled(bgr)}",)
        if said:
            notes += (_decoder_said(said),)
        return DecodedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), notes)

    _require_nonempty(header.height, header.width, label)
    flag, reduction, size_note = _choose_decode_flag(header, label, max_pixels)
    bgr, ended_early, said = _imdecode_as_imread(data, buffer, flag, label)
    if bgr is None:
        if header.truncated:
            raise ImageError(f"{label}: {header.format} data is truncated ({header.truncated}); "
                             f"OpenCV could not decode it{_in_parentheses(said)}")
        raise ImageError(f"{label}: {_undecodable_reason(buffer, header.kind, label)}{_in_parentheses(said)}")
    _require_nonempty(bgr.shape[0], bgr.shape[1], label)
    notes = header.notes + size_note + ((_decoder_said(said),) if said else ())
    if any("extraneous bytes before marker" in line for line in said):  # libjpeg's own words for the walk's note
        notes = tuple(note for note in notes if not note.startswith(EXTRANEOUS_NOTE))
    if not header.colour_known:
        notes = _describe_by_unchanged_decode(buffer, bgr.shape[0] * bgr.shape[1], label, header.cmyk) + notes
    if header.truncated or ended_early:
        why = f"is truncated ({header.truncated})" if header.truncated else "ends early"
        notes += (f"{header.format} data {why}: "
                  f"{_what_was_filled(bgr) if header.format == 'JPEG' else _DECODED_WHOLE}",)
    elif header.end_marker_at is not None and _scan_cut_short_before_its_end_marker(data, header.end_marker_at,
                                                                                      flag, bgr, label):
        notes += (f"JPEG image data ends early (its end marker follows a cut scan): {_what_was_filled(bgr)}",)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if reduction == 1:
        return DecodedImage(rgb, notes)
    return DecodedImage(rgb, notes, reduction, _full_hw(header, rgb.shape[:2], reduction))


def _in_parentheses(said: list[str]) -> str:
    return f" ({_decoder_said(said)})" if said else ""


def _undecodable_reason(buffer: np.ndarray, image_format: str, label: str) -> str:
    """Why an image whose header parsed gives no 8-bit colour decode: samples OpenCV reads only
    unchanged (a float or 32-bit TIFF, which the reference's cv2.imread cannot read either), else
    corrupt data."""
    unchanged = _imdecode(buffer, cv2.IMREAD_UNCHANGED, label)
    if unchanged is None:
        return f"{image_format} data is corrupt; OpenCV could not decode it"
    channels = 1 if unchanged.ndim == 2 else unchanged.shape[2]
    advice = ("re-encode it (PNG, or a baseline JPEG)" if unchanged.dtype in (np.uint8, np.uint16)
              else "convert it to 8- or 16-bit integer samples")  # a grayscale lossless JPEG is uint8 already
    return (f"{image_format} with {unchanged.dtype} samples ({channels} channel(s)), which OpenCV decodes "
            f"only unchanged, not as the 8-bit colour image the reference's cv2.imread reads; {advice}")


def _full_hw(header: ImageHeader, reduced_hw: tuple[int, int], reduction: int) -> tuple[int, int]:
    """The full-size (height, width) of a JPEG decoded reduced: the header's, swapped when its EXIF
    orientation turned the image. The reduced decode's shape (libjpeg's reduced sides are
    ceil(side / reduction)) overrules the walk's reading of the orientation, which cannot tell
    when both sides reduce to the same number (400x396 at 1/8 is 50x50)."""
    upright, turned = (header.height, header.width), (header.width, header.height)
    likely, other = (turned, upright) if header.sides_swapped else (upright, turned)
    if tuple(-(-side // reduction) for side in likely) == tuple(reduced_hw):
        return likely
    return other


def _imdecode_as_imread(data: bytes, buffer: np.ndarray, flag: int,
                        label: str) -> tuple[np.ndarray | None, bool, list[str]]:
    """``cv2.imdecode`` giving what ``cv2.imread`` gives for the same bytes in a file: a JPEG that
    imdecode refuses is decoded again as imread's file reader reads it (see the module docstring),
    and said to have ended early. Also returns what the decoder printed while producing the result
    (see ``decoder_messages``; its "premature end" warning is what the caller's note says)."""
    said: list[str] = []
    bgr = _imdecode(buffer, flag, label, said)
    if bgr is not None or not data.startswith(b"\xff\xd8"):
        return bgr, False, said
    padded = np.frombuffer(data + _JPEG_END_AS_IMREAD_READS_IT, dtype=np.uint8)
    said = []
    bgr = _imdecode(padded, flag, label, said)
    if bgr is None:
        return None, False, said
    said = [line for line in said if "premature end of data segment" not in line]
    return bgr, True, said


_DECODED_WHOLE = ("OpenCV decoded the whole image from what was present, as cv2.imread does (its decoder refuses "
                  "one whose pixel data is cut, so only bytes after that data are missing, or the declared size "
                  "is wrong)")
"""The note's end for a BMP or WebP shorter than its header declares that still decodes."""

_MISSING_DATA_GREY = 128
"""What libjpeg decodes scan data it never received to: every coefficient zero, mid-grey."""

_ENTROPY_PROBE = bytes(range(0xFF)) * 4
"""Bytes put before a JPEG's end marker to see whether its last scan takes them: no 0xFF, so no
marker among them."""


def _scan_cut_short_before_its_end_marker(data: bytes, end: int, flag: int, bgr: np.ndarray, label: str) -> bool:
    """Whether a JPEG whose end marker is present decoded grey fill all the same: its scan data was
    cut and an end marker put after it (a repair tool, a cut upload), and libjpeg, meeting the marker
    early, filled the rest with flat grey without a word the caller sees. Checked only where an edge
    row or column is that grey, which a photograph's edge almost never is exactly, by decoding again
    with bytes put before the end marker: a complete scan leaves them unread (libjpeg skips bytes
    before a marker), a cut one decodes them as its missing data, so the pixels change. ``end``:
    the end marker after the image's scans (data may follow it: a multi-picture file's second
    image). Only where decoder messages are captured (the CLI), which drop libjpeg's warning about
    the skipped bytes: elsewhere it would reach the host's stderr as a false "Corrupt JPEG data"."""
    edges = (bgr[-1], bgr[0], bgr[:, -1], bgr[:, 0])
    if not decoder_messages_captured() or not any((edge == _MISSING_DATA_GREY).all() for edge in edges):
        return False
    probed = _imdecode(np.frombuffer(data[:end] + _ENTROPY_PROBE + data[end:], np.uint8), flag, label)
    return probed is not None and probed.shape == bgr.shape and not np.array_equal(probed, bgr)


def _what_was_filled(bgr: np.ndarray) -> str:
    """How much of a JPEG that ends early is the decoder's stand-in: a baseline JPEG decodes the
    blocks it has and fills the rest with flat mid-grey, a band at the image's bottom (another edge
    once EXIF orientation turned it). Counted in whole rows or columns, so the row the data ends
    in, grey from there on, is not counted: a lower bound. A score from an image that is mostly
    fill says little about the image, so the note says how much."""
    height, width = bgr.shape[:2]
    bands = [(_grey_lines(bgr[::-1]), "bottom", "row", height), (_grey_lines(bgr), "top", "row", height),
             (_grey_lines(bgr[:, ::-1].swapaxes(0, 1)), "right", "column", width),
             (_grey_lines(bgr.swapaxes(0, 1)), "left", "column", width)]
    count, edge, line, side = max(bands, key=lambda band: band[0] / band[3])
    if not count:
        return ("OpenCV decoded what was present, as cv2.imread does; no edge of the image is grey fill (only the "
                "end marker was missing, or a progressive JPEG lacks later scans, which lowers detail throughout)")
    if count == side:
        return "OpenCV decoded what was present, as cv2.imread does: none of the image was there, it is all grey fill"
    return (f"OpenCV decoded what was present and filled the rest with flat grey, as cv2.imread does: "
            f"{100 * count / side:.0f} % of the image (its {edge} {count} of {side} {line}s) is fill")


def _grey_lines(lines: np.ndarray) -> int:
    """How many of ``lines`` (rows, or columns as rows) are all the decoder's grey before the first
    that is not: one line at a time, so a 64 MP image costs no full-size mask."""
    for count, pixels in enumerate(lines):
        if not (pixels == _MISSING_DATA_GREY).all():
            return count
    return len(lines)


def _decoder_said(said: list[str]) -> str:
    """The decoder's own lines, once each, the first three in full."""
    lines = list(dict.fromkeys(said))
    more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
    return "decoder: " + "; ".join(lines[:3]) + more


def _imdecode(buffer: np.ndarray, flag: int, label: str, said: list[str] | None = None) -> np.ndarray | None:
    """``cv2.imdecode``, with OpenCV's exceptions (an image above its own pixel limit, a decoder's
    failed assertion) turned into an ``ImageError`` that names the image: they are about that one
    file, and a batch goes on without it. What the decoder prints meanwhile is captured where the
    program asked for that (``decoder_messages``), added to ``said`` when given and otherwise
    dropped: a probe's repeat of the main decode's complaint is no news."""
    try:
        with decoder_messages() as captured:
            bgr = cv2.imdecode(buffer, flag)
        if said is not None:
            said.extend(captured)
        return bgr
    except cv2.error as error:
        reason = (getattr(error, "err", "") or str(error).strip().splitlines()[-1]).strip()
        if "CV_IO_MAX_IMAGE_PIXELS" in reason:
            reason = "the image is larger than OpenCV decodes (OPENCV_IO_MAX_IMAGE_PIXELS)"
        raise ImageError(f"{label}: OpenCV could not decode it: {reason}") from None


def _require_within_limit_after_decoding(pixels: np.ndarray, label: str, max_pixels: int) -> None:
    """The size limit for pixels already in memory (a format whose header this module does not
    parse, or a caller's array): the face localisation and resizing that follow would multiply
    their memory."""
    height, width = pixels.shape[:2]
    if width * height > max_pixels:
        raise ImageError(f"{label}: image {width}x{height} ({_pixel_count(width * height, max_pixels)}) is above "
                         f"the limit of {_pixel_count(max_pixels, width * height)}; {_RAISE_LIMIT}")


def _pixel_count(pixels: int, compared_with: int | None = None) -> str:
    """A size for messages: megapixels, or the count where a limit of 1000 pixels would read 0.0 MP,
    or where ``compared_with`` would read the same (8001x8001 "64.0 MP" above a limit of "64.0 MP")."""
    if pixels < 100_000:
        return f"{pixels} pixel" + ("" if pixels == 1 else "s")
    megapixels = f"{pixels / 1e6:.1f} MP"
    if compared_with is not None and megapixels == f"{compared_with / 1e6:.1f} MP":
        return f"{pixels:,} pixels"
    return megapixels


def _memory_size(size: int) -> str:
    """Bytes for messages, in the largest binary unit that keeps a digit before the point (a
    small limit's refusal read "about 0.0 GiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


# What decoding holds a pixel in, where more than the 3 bytes of the result: the float formats
# decode to 32-bit RGB first (12 bytes) and convert it
_DECODE_BYTES_PER_PIXEL = {"Radiance HDR": 15, "PFM": 15}


# A progressive JPEG's coefficients at full colour resolution (4:4:4): 3 components of 2 bytes
_LARGEST_COEFFICIENT_BYTES_PER_PIXEL = 6
# Passes over a limit-sized 4:4:4 image's coefficients a progressive JPEG may ask for: real ones
# have about 10 scans; a crafted 110 KB file of 8000 scans claiming 128 MP took 107 s of CPU
_MAX_SCAN_PASSES = 100


def _choose_decode_flag(header: ImageHeader, label: str, max_pixels: int) -> tuple[int, int, tuple[str, ...]]:
    """IMREAD_COLOR when the image fits, else the smallest JPEG reduction that fits, else refuse;
    with the reduction (1 at full size) and its note. A reduction bounds the memory of a baseline
    JPEG only: a progressive one above the limit is decoded reduced while its coefficients take no
    more than those of a 4:4:4 progressive JPEG within the limit (a 1 KB file claiming 32000x32000
    pixels took 6 GB decoded at 1/8), so a 4:2:0 photograph up to twice the limit still is. At any
    size, such a JPEG's scans (each a pass over those coefficients) are bounded too, and a lossless
    JPEG, which libjpeg cannot decode reduced, is held to the limit as other formats are."""
    pixels = header.width * header.height
    budget = _LARGEST_COEFFICIENT_BYTES_PER_PIXEL * max_pixels
    size = f"{header.width}x{header.height} ({_pixel_count(pixels, max_pixels)})"
    if pixels > max_pixels and header.coefficient_bytes > budget:
        raise ImageError(
            f"{label}: JPEG image {size} is above the limit of {_pixel_count(max_pixels, pixels)} and "
            f"progressive (or multi-scan): libjpeg holds every coefficient of the full-size image whatever "
            f"the reduction asked for, about {_memory_size(header.coefficient_bytes)}, more than the "
            f"{_memory_size(budget)} a 4:4:4 JPEG of the limit's size takes, so it is refused. Re-encode it as "
            f"a baseline JPEG, or {_RAISE_LIMIT}")
    if header.coefficient_bytes and header.scans * header.coefficient_bytes > _MAX_SCAN_PASSES * budget:
        raise ImageError(
            f"{label}: JPEG image {header.width}x{header.height} has {header.scans} scans, each a pass over "
            f"the coefficients of the whole image (about {_memory_size(header.coefficient_bytes)}): more than "
            f"{_MAX_SCAN_PASSES} passes over those of a JPEG of the limit's size (real progressive JPEGs have "
            f"about 10 scans), so it is refused. Re-encode it as a baseline JPEG, or {_RAISE_LIMIT}")
    if pixels <= max_pixels:
        return cv2.IMREAD_COLOR, 1, ()
    if header.format != "JPEG" or header.lossless:
        raise ImageError(
            f"{label}: {header.kind} image {size} is above the limit of {_pixel_count(max_pixels, pixels)}; "
            f"OpenCV can only decode {header.kind} at full size (about "
            f"{_memory_size(pixels * _DECODE_BYTES_PER_PIXEL.get(header.format, 3))}), so it is refused. "
            f"Convert it to {'a baseline JPEG' if header.lossless else 'JPEG'}, or {_RAISE_LIMIT}")
    for factor, flag in _REDUCED_JPEG_FLAGS:
        # libjpeg's scaled output is ceil(side / factor)
        if -(-header.width // factor) * -(-header.height // factor) <= max_pixels:
            return flag, factor, (f"downscaled 1/{factor} at decode (image {header.width}x"
                                  f"{header.height} above max_pixels={max_pixels})",)
    raise ImageError(f"{label}: JPEG image {size} is too large even decoded at 1/8 "
                     f"(limit {_pixel_count(max_pixels, pixels)}); {_RAISE_LIMIT}")


def _require_nonempty(height: int, width: int, label: str) -> None:
    if height <= 0 or width <= 0:
        kind = "negative" if min(width, height) < 0 else "zero-sized"  # a BMP header's width is signed
        raise ImageError(f"{label} has a {kind} side ({width}x{height} pixels)")


_ENCODED_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                       b"II*\x00": "TIFF", b"MM\x00*": "TIFF", JP2_CODESTREAM: "JPEG 2000",
                       JP2_SIGNATURE: "JPEG 2000", SUN_RASTER_MAGIC: "Sun raster",
                       **dict.fromkeys(RADIANCE_SIGNATURES, "Radiance HDR")}
"""File signatures long enough that no column of real pixels begins with one by chance."""
# A Netpbm header (PBM/PGM/PPM/PAM/PFM): magic, white space, then a size or PAM's first field
_NETPBM_START = re.compile(rb"P[1-7Ff][ \t\r\n]+(?:#[^\n]*\n[ \t\r\n]*)*(?:\d|WIDTH|HEIGHT|DEPTH|MAXVAL)")


def _encoded_format(array: np.ndarray) -> str | None:
    """The format whose file an array of one byte per row holds (what ``np.frombuffer`` of a file,
    or ``cv2.imencode``, gives), or None: pixels of a 1-pixel-wide image would be scored as one."""
    if array.dtype != np.uint8 or array.size < 12 or array.shape[1:] not in ((), (1,), (1, 1)):
        return None
    head = array.reshape(-1)[:64].tobytes()
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM") and int.from_bytes(head[2:6], "little") == array.size:  # the file's own size
        return "BMP"
    if _NETPBM_START.match(head):
        return "Netpbm (PBM/PGM/PPM/PAM/PFM)"
    return next((name for signature, name in _ENCODED_SIGNATURES.items() if head.startswith(signature)), None)


def _conversion_hint(array: np.ndarray) -> str:
    """How to turn pixels of another depth into the uint8 the networks were trained on, as the
    file path would: a 16-bit file is decoded to its high byte (cv2.imread's IMREAD_COLOR)."""
    if array.dtype.kind == "f":
        return "; float pixels in 0..1 convert with (array * 255).round().astype(np.uint8)"
    if array.dtype in (np.uint16, np.dtype(">u2")):
        return "; 16-bit pixels convert as a 16-bit file decodes, keeping the high byte: (array >> 8).astype(np.uint8)"
    return ""


def _from_array(array: np.ndarray, max_pixels: int) -> DecodedImage:
    expected = "uint8 HxW or HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA)"
    encoded = _encoded_format(array)
    if encoded is not None:
        raise ImageError(f"image array of shape {array.shape} holds the bytes of a {encoded} file, not pixels; "
                         f"pass array.tobytes() to decode it")
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"image array must be {expected}; got shape {array.shape} "
                         f"dtype {array.dtype}{_conversion_hint(array)}")
    _require_nonempty(array.shape[0], array.shape[1], f"image array of shape {array.shape}")
    _require_within_limit_after_decoding(array, "image array", max_pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return DecodedImage(cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2RGB),
                            ("grayscale expanded to RGB",))
    if array.shape[2] == 4:
        return DecodedImage(np.ascontiguousarray(array[:, :, :3]), ("alpha channel dropped",))
    return DecodedImage(np.ascontiguousarray(array), ())


def _describe_by_unchanged_decode(buffer: np.ndarray, pixels: int, label: str,
                                  cmyk: bool = False) -> tuple[str, ...]:
    """Colour notes for a format whose header says only the size or nothing, from an
    IMREAD_UNCHANGED decode of a small image."""
    if pixels > UNCHANGED_PROBE_MAX_PIXELS:
        return ()
    original = _imdecode(buffer, cv2.IMREAD_UNCHANGED, label)
    if original is None:
        return ()
    channels = 1 if original.ndim == 2 else original.shape[2]
    notes = []
    if channels in (1, 2):
        notes.append("grayscale expanded to RGB")
    if channels == 2 or channels == 4 and not cmyk:
        notes.append("alpha channel dropped")
    if original.dtype == np.uint16:
        notes.append("16-bit scaled to 8-bit")
    elif original.dtype.kind == "f":
        notes.append("floating-point pixels converted to 8-bit")
    return tuple(notes)


def encoded_suffix(data: bytes) -> str:
    """".jpg" for the bytes of a JPEG file, else "": the reference's face step re-saves its input
    under the input's own name, lossily for JPEG only, so bytes given without a name follow their
    content (see ``preprocess.reencode_like_reference_face_file``)."""
    return ".jpg" if data.startswith(b"\xff\xd8\xff") else ""

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
  read from the file header (PNG IHDR, JPEG SOF/Adobe/EXIF, BMP info header, WebP VP8/VP8L/VP8X,
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
  so the full image never exists in memory) and the note says so. Every other format is refused:
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
header declares), so a refusal names the cause and an accepted partial image carries a note.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .decoder_messages import decoder_messages
from .errors import DfdError

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


@dataclass(frozen=True)
class _Header:
    """What a file header says, read before decoding."""

    format: str
    width: int
    height: int
    notes: tuple[str, ...]  # what IMREAD_COLOR will convert
    truncated: str | None  # why the data looks cut short, None when complete
    # False where only the size is parsed (TIFF, PNM, JPEG 2000): the colour layout is then
    # described by the unchanged probe, as for a format without a parsed header
    colour_known: bool = True
    cmyk: bool = False  # four channels in the unchanged probe are CMYK (a TIFF says so), not RGBA


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
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _decode_bytes(read_image_file(source), _file_label(source), max_pixels)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise ImageError(f"cannot decode an image from an object of type {type(source).__name__}: pass a file "
                         f"path, encoded image bytes or a uint8 numpy array")
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


def _path_hint(data: bytes) -> str:
    """Bytes are encoded image data; when they fail to decode and name an existing file, the
    caller most likely meant a path (os.fsencode'd, or read from a bytes-mode listing)."""
    try:
        named = len(data) < 4096 and os.path.exists(data)
    except (ValueError, OSError):  # an embedded NUL byte, a name too long for the system
        named = False
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


def _file_label(path: str | os.PathLike) -> str:
    return f"'{os.fspath(path)}'"


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
    except ValueError as error:  # a NUL character, which no file name may hold
        return f"cannot read image file {label}: {error}"
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
    header = _read_header(data)
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
        raise ImageError(f"{label}: {_undecodable_reason(buffer, header.format, label)}{_in_parentheses(said)}")
    _require_nonempty(bgr.shape[0], bgr.shape[1], label)
    notes = header.notes + size_note + ((_decoder_said(said),) if said else ())
    if any("extraneous bytes before marker" in line for line in said):  # libjpeg's own words for the walk's note
        notes = tuple(note for note in notes if not note.startswith(_EXTRANEOUS_NOTE))
    if not header.colour_known:
        notes = _describe_by_unchanged_decode(buffer, bgr.shape[0] * bgr.shape[1], label, header.cmyk) + notes
    if header.truncated or ended_early:
        why = f"is truncated ({header.truncated})" if header.truncated else "ends early"
        notes += (f"{header.format} data {why}: {_what_was_filled(bgr)}",)
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
    return (f"{image_format} with {unchanged.dtype} samples ({channels} channel(s)), which OpenCV decodes "
            f"only unchanged, not as the 8-bit colour image the reference's cv2.imread reads; convert it "
            f"to 8- or 16-bit integer samples")


def _full_hw(header: _Header, reduced_hw: tuple[int, int], reduction: int) -> tuple[int, int]:
    """The full-size (height, width) of a JPEG decoded reduced: the header's, swapped when its EXIF
    orientation turned the image (libjpeg's reduced sides are ceil(side / reduction))."""
    upright = (header.height, header.width)
    if tuple(-(-side // reduction) for side in upright) == tuple(reduced_hw):
        return upright
    return header.width, header.height


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


_MISSING_DATA_GREY = 128
"""What libjpeg decodes scan data it never received to: every coefficient zero, mid-grey."""


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


def _choose_decode_flag(header: _Header, label: str, max_pixels: int) -> tuple[int, int, tuple[str, ...]]:
    """IMREAD_COLOR when the image fits, else the smallest JPEG reduction that fits, else refuse;
    with the reduction (1 at full size) and its note."""
    pixels = header.width * header.height
    if pixels <= max_pixels:
        return cv2.IMREAD_COLOR, 1, ()
    size = f"{header.width}x{header.height} ({_pixel_count(pixels, max_pixels)})"
    if header.format != "JPEG":
        raise ImageError(
            f"{label}: {header.format} image {size} is above the limit of {_pixel_count(max_pixels, pixels)}; "
            f"OpenCV can only decode {header.format} at full size (about "
            f"{_memory_size(pixels * _DECODE_BYTES_PER_PIXEL.get(header.format, 3))}), so it is refused. "
            f"Convert it to JPEG, or {_RAISE_LIMIT}")
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


_JP2_CODESTREAM = b"\xff\x4f\xff\x51"  # SOC then SIZ: a bare JPEG 2000 codestream (.j2k)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_ENCODED_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
                       b"II*\x00": "TIFF", b"MM\x00*": "TIFF", _JP2_CODESTREAM: "JPEG 2000",
                       _JP2_SIGNATURE: "JPEG 2000"}
"""File signatures long enough that no column of real pixels begins with one by chance."""


def _encoded_format(array: np.ndarray) -> str | None:
    """The format whose file an array of one byte per row holds (what ``np.frombuffer`` of a file,
    or ``cv2.imencode``, gives), or None: pixels of a 1-pixel-wide image would be scored as one."""
    if array.dtype != np.uint8 or array.size < 12 or array.shape[1:] not in ((), (1,), (1, 1)):
        return None
    head = array.reshape(-1)[:12].tobytes()
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for signature, name in _ENCODED_SIGNATURES.items() if head.startswith(signature)), None)


def _from_array(array: np.ndarray, max_pixels: int) -> DecodedImage:
    expected = "uint8 HxW or HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA)"
    encoded = _encoded_format(array)
    if encoded is not None:
        raise ImageError(f"image array of shape {array.shape} holds the bytes of a {encoded} file, not pixels; "
                         f"pass array.tobytes() to decode it")
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"image array must be {expected}; got shape {array.shape} "
                         f"dtype {array.dtype}")
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


# ---------------------------------------------------------------------------------------------
# Header parsing: only what decides size, colour layout and completeness.

def _read_header(data: bytes) -> _Header | None:
    """The parsed header, or None for an unrecognised format or a header too damaged to read."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png_header(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_header(data)
        if data.startswith(b"BM"):
            return _bmp_header(data)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_header(data)
        if data.startswith((b"II", b"MM")):
            return _tiff_header(data)
        if data[:1] == b"P" and data[1:2] in b"1234567Ff" and len(data) > 2:
            return _pnm_header(data)
        if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
            return _gif_header(data)
        if data.startswith((_JP2_CODESTREAM, _JP2_SIGNATURE)):
            return _jpeg2000_header(data)
        if data[4:8] == b"ftyp":
            return _heif_header(data)
        if data.startswith(_SUN_RASTER_MAGIC):
            return _sun_raster_header(data)
        if data.startswith(_RADIANCE_SIGNATURES):
            return _radiance_header(data)
    except (IndexError, ValueError):
        return None
    return None


def _uint(data: bytes, pos: int, size: int, order: str) -> int:
    """An unsigned integer of ``size`` bytes at ``pos``; IndexError where the data ends first
    (a slice past the end would silently read as a shorter number)."""
    if pos < 0 or pos + size > len(data):
        raise IndexError(f"header field at {pos} is past the end of the data")
    return int.from_bytes(data[pos:pos + size], order)


def _png_header(data: bytes) -> _Header | None:
    if data[12:16] != b"IHDR" or len(data) < 29:
        return None
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    depth, color_type = data[24], data[25]
    chunks, exif, truncated = _png_chunks(data)
    notes = []
    if color_type in (0, 4):
        notes.append("grayscale expanded to RGB" if depth >= 8
                     else f"{depth}-bit grayscale expanded to 8-bit RGB")
    if color_type == 3:
        notes.append("palette expanded to RGB")
    if color_type in (4, 6):
        notes.append("alpha channel dropped")
    elif b"tRNS" in chunks:
        notes.append("transparency (tRNS) dropped")
    if depth == 16:
        notes.append("16-bit scaled to 8-bit (high byte kept)")
    if b"acTL" in chunks:
        notes.append("animated: first frame only")
    notes += _orientation_notes(_exif_orientation(exif))
    return _Header("PNG", width, height, tuple(notes), truncated)


def _png_chunks(data: bytes) -> tuple[set[bytes], bytes, str | None]:
    """Chunk types found by walking the chunk lengths, the eXIf chunk's body (b"" without one), and
    why the walk ended early if it did."""
    types: set[bytes] = set()
    exif = b""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        types.add(kind)
        if kind == b"eXIf" and not exif:
            exif = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if pos > len(data):
            return types, exif, f"the {kind.decode('latin-1')} chunk is cut short"
        if kind == b"IEND":
            return types, exif, None
    return types, exif, "no IEND chunk"


def _orientation_notes(orientation: int | None) -> list[str]:
    """The note for an EXIF orientation, which IMREAD_COLOR applies (in JPEG, PNG, WebP and TIFF)."""
    if orientation is not None and 2 <= orientation <= 8:
        return [f"rotated/flipped upright as EXIF orientation {orientation} asks"]
    return []


_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF))
# the marker after entropy-coded data: 0xFF (plus fill 0xFFs) not followed by a stuffed 0x00
# or a restart marker RST0..RST7, which belong to the scan
_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# any marker, as libjpeg looks for one after bytes where a marker should be (it skips them)
_ANY_MARKER = re.compile(rb"\xff+[^\x00\xff]")
_EXTRANEOUS_NOTE = "corrupt JPEG data: "


def _jpeg_header(data: bytes) -> _Header | None:
    frame = None
    adobe_transform = None
    orientation = None
    truncated = None
    extraneous = 0
    pos = 2
    while True:
        if pos + 2 > len(data):
            truncated = "no end-of-image marker"
            break
        if data[pos] != 0xFF:  # libjpeg warns and skips to the next marker: so does the walk
            following = _ANY_MARKER.search(data, pos)
            if following is None:
                truncated = "no end-of-image marker"
                break
            extraneous += following.end() - 2 - pos
            pos = following.end() - 2
        while pos + 2 < len(data) and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if len(segment) < length - 2:
            truncated = f"segment 0xFF{marker:02X} is cut short"
            break
        if marker in _SOF_MARKERS and frame is None:
            frame = (segment[0], int.from_bytes(segment[1:3], "big"),
                     int.from_bytes(segment[3:5], "big"), segment[5])
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and orientation is None:
            orientation = _exif_orientation(segment[6:])
        pos += 2 + length
        if marker == 0xDA:
            following = _NEXT_MARKER.search(data, pos)
            if following is None:
                truncated = "no end-of-image marker after the image data"
                break
            pos = following.end() - 2
    if frame is None:
        return None
    precision, height, width, components = frame
    if height == 0:  # height defined later by a DNL marker: let OpenCV size it
        return None
    notes = []
    if components == 1:
        notes.append("grayscale expanded to RGB")
    elif components == 4:
        notes.append("YCCK (CMYK) converted to RGB" if adobe_transform == 2
                     else "CMYK converted to RGB")
    if precision > 8:
        notes.append(f"{precision}-bit scaled to 8-bit")
    notes += _orientation_notes(orientation)
    if extraneous:
        notes.append(f"{_EXTRANEOUS_NOTE}{extraneous} extraneous byte(s) between markers, skipped as "
                     f"cv2.imread skips them")
    return _Header("JPEG", width, height, tuple(notes), truncated)


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block, None when absent."""
    tiff = tiff.removeprefix(b"Exif\x00\x00")  # WebP writers disagree on whether it is there
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8:entry + 10], order)
    return None


def _bmp_header(data: bytes) -> _Header | None:
    info_size = int.from_bytes(data[14:18], "little")
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width = int.from_bytes(data[18:20], "little")
        height = int.from_bytes(data[20:22], "little")
        bits = int.from_bytes(data[24:26], "little")
    elif info_size >= 40:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = abs(int.from_bytes(data[22:26], "little", signed=True))  # negative: top-down
        bits = int.from_bytes(data[28:30], "little")
    else:
        return None
    notes = []
    if bits <= 8:
        notes.append(f"{bits}-bit indexed colours expanded to RGB")
    elif bits == 16:
        notes.append("16-bit (5-5-5/5-6-5) colours expanded to 8 bits per channel")
    elif bits == 32:
        notes.append("fourth (alpha) channel dropped")
    declared = int.from_bytes(data[2:6], "little")
    truncated = (f"{len(data)} of the {declared} bytes the header declares"
                 if declared > len(data) else None)
    return _Header("BMP", width, height, tuple(notes), truncated)


def _webp_header(data: bytes) -> _Header | None:
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        height = int.from_bytes(body[8:10], "little") & 0x3FFF
        notes: tuple[str, ...] = ()
    elif chunk == b"VP8L" and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
        notes = ("alpha channel dropped",) if bits >> 28 & 1 else ()
    elif chunk == b"VP8X":
        flags = body[0]
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        notes = (("alpha channel dropped",) if flags & 0x10 else ()) + (
            ("animated: first frame only",) if flags & 0x02 else ())
        if flags & 0x08:  # an EXIF chunk, whose orientation IMREAD_COLOR applies
            notes += tuple(_orientation_notes(_exif_orientation(_riff_chunk(data, b"EXIF"))))
    else:
        return None
    declared = int.from_bytes(data[4:8], "little") + 8
    truncated = (f"{len(data)} of the {declared} bytes the header declares"
                 if declared > len(data) else None)
    return _Header("WebP", width, height, notes, truncated)


def _riff_chunk(data: bytes, kind: bytes) -> bytes:
    """The body of a WebP file's first chunk of ``kind`` (b"" when absent)."""
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos:pos + 4] == kind:
            return data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    return b""


_TIFF_TAGS = {256: "width", 257: "height", 262: "photometric", 274: "orientation"}
_TIFF_SEPARATED = 5  # PhotometricInterpretation: CMYK inks, which OpenCV converts to RGB
# BYTE, SHORT, LONG, their signed kinds and LONG8/SLONG8: libtiff takes the size from any of them
# (a negative one fails its decode; read unsigned it is refused as too large or fails there too)
_TIFF_INTEGER_SIZES = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4, 16: 8, 17: 8}


def _tiff_header(data: bytes) -> _Header | None:
    """Size from the first image file directory (classic TIFF or BigTIFF); the first page is the
    one IMREAD_COLOR decodes, and a second directory gets a note."""
    order = "little" if data[:2] == b"II" else "big"
    magic = _uint(data, 2, 2, order)
    if magic == 42:
        field, count_size, directory = 4, 2, _uint(data, 4, 4, order)
    elif magic == 43 and _uint(data, 4, 2, order) == 8:  # BigTIFF: 8-byte offsets
        field, count_size, directory = 8, 8, _uint(data, 8, 8, order)
    else:
        return None
    entry_size = 4 + 2 * field  # tag, type, count, value (a value that fits is left-justified)
    entries = _uint(data, directory, count_size, order)
    tags: dict[str, int] = {}
    for index in range(entries):
        entry = directory + count_size + index * entry_size
        name = _TIFF_TAGS.get(_uint(data, entry, 2, order))
        if name is not None:
            value_size = _TIFF_INTEGER_SIZES.get(_uint(data, entry + 2, 2, order))
            if value_size is None or value_size > field:
                if name in ("orientation", "photometric"):  # only a note depends on it
                    continue
                return None
            tags[name] = _uint(data, entry + 4 + field, value_size, order)
    if "width" not in tags or "height" not in tags:
        return None
    following = _uint(data, directory + count_size + entries * entry_size, field, order)
    notes = ("TIFF holds more than one page: the first is used",) if following else ()
    cmyk = tags.get("photometric") == _TIFF_SEPARATED
    notes += ("CMYK converted to RGB",) if cmyk else ()
    notes += tuple(_orientation_notes(tags.get("orientation")))
    return _Header("TIFF", tags["width"], tags["height"], notes, None, False, cmyk)


# a header number, after whitespace and "#" comments (which may sit between any two fields)
_PNM_NUMBER = re.compile(rb"(?:\s|#[^\r\n]*[\r\n])+(\d{1,10})")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d{1,10})\s*$", re.MULTILINE)


def _pnm_header(data: bytes) -> _Header | None:
    """Netpbm: P1-P6 (width and height are the first two numbers), P7 PAM (WIDTH/HEIGHT lines
    before ENDHDR) and PFM (PF/Pf, then width and height)."""
    if data[1:2] == b"7":
        end = data.find(b"ENDHDR")
        fields = dict(_PAM_FIELD.findall(data[:end])) if end > 0 else {}
        if len(fields) != 2:
            return None
        return _Header("PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]), (), None, False)
    first = _PNM_NUMBER.match(data, 2)
    second = _PNM_NUMBER.match(data, first.end()) if first else None
    if second is None:
        return None
    kind = "PFM" if data[1:2] in b"Ff" else "PNM"
    return _Header(kind, int(first.group(1)), int(second.group(1)), (), None, False)


_SUN_RASTER_MAGIC = b"\x59\xa6\x6a\x95"
_RADIANCE_SIGNATURES = (b"#?RGBE", b"#?RADIANCE")  # what OpenCV's HDR decoder recognises
_RADIANCE_SIZE = re.compile(rb"-Y\s*([+-]?\d{1,10})\s*\+X\s*([+-]?\d{1,10})")


def _sun_raster_header(data: bytes) -> _Header:
    """Sun raster: width and height are the 32-bit big-endian words after the magic number. Its
    run-length encoding lets a small file declare a huge image, and OpenCV allocates the whole
    image before it reads the data, so the size must be known before decoding."""
    return _Header("Sun raster", _uint(data, 4, 4, "big"), _uint(data, 8, 4, "big"), (), None, False)


def _header_lines(data: bytes) -> Iterator[bytes]:
    """The lines C's ``fgets`` with a 128-byte buffer returns, as OpenCV's HDR reader reads its
    header: a line longer than 127 bytes comes in pieces, so the blank line that ends the header
    is found where OpenCV finds it."""
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos, pos + 127)
        end = newline + 1 if newline >= 0 else min(pos + 127, len(data))
        yield data[pos:end]
        pos = end


def _radiance_header(data: bytes) -> _Header | None:
    """Radiance HDR (RGBE), read as OpenCV's reader reads it (rgbe.cpp): the lines after the
    signature up to a blank one, then the resolution line "-Y <height> +X <width>". Its scanlines
    are run-length encoded and decoded to 32-bit floats, so a 6 MB file of 10000x10000 pixels
    took 1.5 GB and 3.7 s of decoding before the limit refused it."""
    lines = _header_lines(data)  # no cap: OpenCV reads a header of any length
    next(lines)  # the signature
    for line in lines:
        if line == b"\n":
            size = _RADIANCE_SIZE.match(next(lines, b""))
            if size is None:
                return None
            return _Header("Radiance HDR", int(size.group(2)), int(size.group(1)), (), None, False)
    return None


_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF",
                b"msf1": "HEIF"}
_HEIF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # boxes holding the size, and their extra header bytes


def _heif_header(data: bytes) -> _Header | None:
    """AVIF/HEIF: the size of the largest image among the ``ispe`` (image spatial extents)
    properties in ``meta/iprp/ipco``; the primary image is the largest (a thumbnail, an alpha
    plane or a grid tile is not larger). A 2 KB AVIF that declares 9000x9000 pixels otherwise
    reached the decoder, which allocated 1.4 GB before the limit could refuse it."""
    brands = [data[8:12]] + [data[pos:pos + 4] for pos in range(16, min(_uint(data, 0, 4, "big"), 64), 4)]
    kind = next((_HEIF_BRANDS[brand] for brand in brands if brand in _HEIF_BRANDS), None)
    if kind is None:
        return None
    sizes = [(width, height) for width, height in _heif_extents(data, 0, len(data))]
    if not sizes:
        return None
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    return _Header(kind, width, height, (), None, False)


def _heif_extents(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(width, height) of every ``ispe`` box inside the boxes from ``start`` to ``end``."""
    extents = []
    pos = start
    while pos + 8 <= end:
        length, kind, body = _uint(data, pos, 4, "big"), data[pos + 4:pos + 8], pos + 8
        if length == 1:
            length, body = _uint(data, pos + 8, 8, "big"), pos + 16
        elif length == 0:
            length = end - pos
        if length < body - pos:
            break
        box_end = min(pos + length, end)
        if kind == b"ispe":  # a full box: version and flags, then width and height
            extents.append((_uint(data, body + 4, 4, "big"), _uint(data, body + 8, 4, "big")))
        elif kind in _HEIF_CONTAINERS:
            extents += _heif_extents(data, body + _HEIF_CONTAINERS[kind], box_end)
        pos = box_end
    return extents


def _gif_header(data: bytes) -> _Header:
    """The logical screen size, with notes from the blocks before the second frame: IMREAD_COLOR
    reads the first frame only and drops its transparency (a GIF is always a palette image, so
    the palette itself is not worth a note). Colour is known from these blocks, which spares the
    unchanged probe; OpenCV's unchanged decode of an animated GIF is four-channel even without
    transparency, so the probe would misreport an opaque one as having an alpha channel."""
    width, height = _uint(data, 6, 2, "little"), _uint(data, 8, 2, "little")
    frames, transparent = _gif_frames(data)
    notes = ("transparency dropped",) if transparent else ()
    if frames > 1:
        notes += ("animated: first frame only",)
    return _Header("GIF", width, height, notes, None)


def _gif_frames(data: bytes) -> tuple[int, bool]:
    """(image descriptors found, stopping at 2; whether the first frame's graphic control
    extension sets a transparent colour), walking the block structure; a walk that runs out of
    data or meets an unknown block stops there, with what it found so far."""
    frames, transparent = 0, False
    pos = 13 + _gif_colour_table_size(data[10] if len(data) > 10 else 0)
    while pos < len(data) and frames < 2:
        block = data[pos]
        if block == 0x21 and pos + 2 < len(data):  # extension: label, then data sub-blocks
            if frames == 0 and data[pos + 1] == 0xF9 and pos + 3 < len(data):
                transparent = bool(data[pos + 3] & 0x01)
            pos = _gif_skip_sub_blocks(data, pos + 2)
        elif block == 0x2C and pos + 10 < len(data):  # image descriptor, colour table, LZW size
            frames += 1
            pos = _gif_skip_sub_blocks(data, pos + 11 + _gif_colour_table_size(data[pos + 9]))
        else:  # 0x3B trailer, or data that is not a block
            break
    return frames, transparent


def _gif_colour_table_size(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _gif_skip_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a chain of length-prefixed sub-blocks ending with a zero length."""
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _jpeg2000_header(data: bytes) -> _Header | None:
    """Size from a codestream's SIZ segment (reference grid less its offset), or from the ``ihdr``
    box inside a JP2 file's ``jp2h`` header box."""
    if data.startswith(_JP2_CODESTREAM):
        width = _uint(data, 8, 4, "big") - _uint(data, 16, 4, "big")
        height = _uint(data, 12, 4, "big") - _uint(data, 20, 4, "big")
        return _Header("JPEG 2000", width, height, (), None, False)
    pos = 0
    while pos + 8 <= len(data):
        length, kind, body = _uint(data, pos, 4, "big"), data[pos + 4:pos + 8], pos + 8
        if length == 1:
            length, body = _uint(data, pos + 8, 8, "big"), pos + 16
        elif length == 0:
            length = len(data) - pos
        if kind == b"ihdr":
            return _Header("JPEG 2000", _uint(data, body + 4, 4, "big"), _uint(data, body, 4, "big"), (),
                           None, False)
        if kind == b"jp2h":
            pos = body  # a super box: its first child follows its header
        elif length < body - pos:
            return None
        else:
            pos += length
    return None

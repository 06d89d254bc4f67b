"""What an image file's header says before it is decoded: its format and size, what OpenCV's
IMREAD_COLOR will convert (grayscale, alpha, 16-bit, CMYK, EXIF rotation) and whether the data
looks cut short.

Why apart from :mod:`dfd.runtime.images`: decoding needs the size before anything is allocated
(the memory limit) and the colour layout without a second decode (the notes); reading a dozen
formats' headers for that is a job of its own, done here with plain byte parsing and no OpenCV.
Only what decides size, colour layout and completeness is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageHeader:
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
    # A JPEG libjpeg decodes in buffered mode (progressive, or a first scan that does not carry
    # every component): the bytes of DCT coefficients it then holds for the whole image, whatever
    # the reduction asked for (2 per coefficient, 64 per 8x8 block of each component); else 0
    coefficient_bytes: int = 0
    scans: int = 0  # JPEG: the scans the walk passed (each one more pass over the coefficients)
    lossless: bool = False  # a lossless JPEG (SOF3/7/11/15), which libjpeg cannot decode reduced
    end_marker_at: int | None = None  # JPEG: the offset of the end-of-image marker the walk reached
    # JPEG: its EXIF orientation (5-8) turns it a quarter, so IMREAD_COLOR gives `width` rows
    sides_swapped: bool = False

    @property
    def kind(self) -> str:
        """The format as messages name it: "lossless JPEG" is refused and advised otherwise."""
        return "lossless JPEG" if self.lossless else self.format


JP2_CODESTREAM = b"\xff\x4f\xff\x51"  # SOC then SIZ: a bare JPEG 2000 codestream (.j2k)
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def read_header(data: bytes) -> ImageHeader | None:
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
        if data.startswith((JP2_CODESTREAM, JP2_SIGNATURE)):
            return _jpeg2000_header(data)
        if data[4:8] == b"ftyp":
            return _heif_header(data)
        if data.startswith(SUN_RASTER_MAGIC):
            return _sun_raster_header(data)
        if data.startswith(RADIANCE_SIGNATURES):
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


def _png_header(data: bytes) -> ImageHeader | None:
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
    return ImageHeader("PNG", width, height, tuple(notes), truncated)


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
_PROGRESSIVE_SOF_MARKERS = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
_LOSSLESS_SOF_MARKERS = frozenset((0xC3, 0xC7, 0xCB, 0xCF))
# the marker after entropy-coded data: 0xFF (plus fill 0xFFs) not followed by a stuffed 0x00
# or a restart marker RST0..RST7, which belong to the scan
_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
# any marker, as libjpeg looks for one after bytes where a marker should be (it skips them)
_ANY_MARKER = re.compile(rb"\xff+[^\x00\xff]")
EXTRANEOUS_NOTE = "corrupt JPEG data: "


def _jpeg_header(data: bytes) -> ImageHeader | None:
    frame = None
    frame_segment = b""
    progressive = lossless = False
    first_scan_components = None
    scans = 0
    end_marker_at = None
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
            end_marker_at = pos
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
            frame_segment, progressive = segment, marker in _PROGRESSIVE_SOF_MARKERS
            lossless = marker in _LOSSLESS_SOF_MARKERS
        elif marker == 0xDA:
            scans += 1
            if first_scan_components is None and segment:
                first_scan_components = segment[0]
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
        notes.append(f"{EXTRANEOUS_NOTE}{extraneous} extraneous byte(s) between markers, skipped as "
                     f"cv2.imread skips them")
    buffered = progressive or (first_scan_components is not None and first_scan_components < components)
    coefficients = _coefficient_bytes(frame_segment, width, height) if buffered else 0
    return ImageHeader("JPEG", width, height, tuple(notes), truncated, coefficient_bytes=coefficients, scans=scans,
                       lossless=lossless, end_marker_at=end_marker_at,
                       sides_swapped=orientation is not None and 5 <= orientation <= 8)


def _coefficient_bytes(frame_segment: bytes, width: int, height: int) -> int:
    """What libjpeg's whole-image coefficient buffer takes for a frame (its SOF segment): for each
    component, its 8x8 blocks at its sampling (libjpeg rounds each to whole blocks), 64 coefficients
    of 2 bytes each. A frame too short to list its components counts as 4:4:4 with 3 components."""
    count = frame_segment[5] if len(frame_segment) > 5 else 3
    factors = [(frame_segment[7 + 3 * i] >> 4, frame_segment[7 + 3 * i] & 0x0F)
               for i in range(count) if 7 + 3 * i < len(frame_segment)] or [(1, 1)] * 3
    largest_h = max(h for h, _ in factors) or 1
    largest_v = max(v for _, v in factors) or 1
    blocks = sum(-(-width * h // (8 * largest_h)) * -(-height * v // (8 * largest_v)) for h, v in factors)
    return blocks * 64 * 2


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


def _bmp_header(data: bytes) -> ImageHeader | None:
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
    return ImageHeader("BMP", width, height, tuple(notes), truncated)


def _webp_header(data: bytes) -> ImageHeader | None:
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
    return ImageHeader("WebP", width, height, notes, truncated)


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


def _tiff_header(data: bytes) -> ImageHeader | None:
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
    return ImageHeader("TIFF", tags["width"], tags["height"], notes, None, False, cmyk)


# a header number, after whitespace and "#" comments (which may sit between any two fields)
_PNM_NUMBER = re.compile(rb"(?:\s|#[^\r\n]*[\r\n])+(\d{1,10})")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d{1,10})\s*$", re.MULTILINE)


def _pnm_header(data: bytes) -> ImageHeader | None:
    """Netpbm: P1-P6 (width and height are the first two numbers), P7 PAM (WIDTH/HEIGHT lines
    before ENDHDR) and PFM (PF/Pf, then width and height)."""
    if data[1:2] == b"7":
        end = data.find(b"ENDHDR")
        fields = dict(_PAM_FIELD.findall(data[:end])) if end > 0 else {}
        if len(fields) != 2:
            return None
        return ImageHeader("PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]), (), None, False)
    first = _PNM_NUMBER.match(data, 2)
    second = _PNM_NUMBER.match(data, first.end()) if first else None
    if second is None:
        return None
    kind = "PFM" if data[1:2] in b"Ff" else "PNM"
    return ImageHeader(kind, int(first.group(1)), int(second.group(1)), (), None, False)


SUN_RASTER_MAGIC = b"\x59\xa6\x6a\x95"
RADIANCE_SIGNATURES = (b"#?RGBE", b"#?RADIANCE")  # what OpenCV's HDR decoder recognises
_RADIANCE_SIZE = re.compile(rb"-Y\s*([+-]?\d{1,10})\s*\+X\s*([+-]?\d{1,10})")


def _sun_raster_header(data: bytes) -> ImageHeader:
    """Sun raster: width and height are the 32-bit big-endian words after the magic number. Its
    run-length encoding lets a small file declare a huge image, and OpenCV allocates the whole
    image before it reads the data, so the size must be known before decoding."""
    return ImageHeader("Sun raster", _uint(data, 4, 4, "big"), _uint(data, 8, 4, "big"), (), None, False)


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


def _radiance_header(data: bytes) -> ImageHeader | None:
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
            return ImageHeader("Radiance HDR", int(size.group(2)), int(size.group(1)), (), None, False)
    return None


_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF",
                b"msf1": "HEIF"}
_HEIF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # boxes holding the size, and their extra header bytes


def _heif_header(data: bytes) -> ImageHeader | None:
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
    return ImageHeader(kind, width, height, (), None, False)


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


def _gif_header(data: bytes) -> ImageHeader:
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
    return ImageHeader("GIF", width, height, notes, None)


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


def _jpeg2000_header(data: bytes) -> ImageHeader | None:
    """Size from a codestream's SIZ segment (reference grid less its offset), or from the ``ihdr``
    box inside a JP2 file's ``jp2h`` header box."""
    if data.startswith(JP2_CODESTREAM):
        width = _uint(data, 8, 4, "big") - _uint(data, 16, 4, "big")
        height = _uint(data, 12, 4, "big") - _uint(data, 20, 4, "big")
        return ImageHeader("JPEG 2000", width, height, (), None, False)
    pos = 0
    while pos + 8 <= len(data):
        length, kind, body = _uint(data, pos, 4, "big"), data[pos + 4:pos + 8], pos + 8
        if length == 1:
            length, body = _uint(data, pos + 8, 8, "big"), pos + 16
        elif length == 0:
            length = len(data) - pos
        if kind == b"ihdr":
            return ImageHeader("JPEG 2000", _uint(data, body + 4, 4, "big"), _uint(data, body, 4, "big"), (),
                           None, False)
        if kind == b"jp2h":
            pos = body  # a super box: its first child follows its header
        elif length < body - pos:
            return None
        else:
            pos += length
    return None

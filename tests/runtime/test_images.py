"""decode_image against `cv2.imread(path)` + BGR->RGB (the reference), and its bad-input suite."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from dfd.runtime import images
from dfd.runtime.decoder_messages import capturing_decoder_messages
from dfd.runtime.images import (DEFAULT_MAX_PIXELS, DecodedImage, ImageError, decode_image, decode_image_file,
                               encoded_suffix)


def reference_decode(path: Path) -> np.ndarray:
    """The reference: cv2.imread(path) (IMREAD_COLOR) then BGR->RGB."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def write(path: Path, image: np.ndarray, *params: int) -> Path:
    assert cv2.imwrite(str(path), image, list(params))
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_png(width: int, height: int, rows_per_block: int = 1000) -> bytes:
    """A valid 8-bit RGB PNG of zeros, written without ever holding the pixels.

    Deflate blocks ended by a full flush do not refer to earlier data, so the compressed bytes of
    one block of rows can be repeated; only the Adler-32 checksum needs every row.
    """
    assert height % rows_per_block == 0
    block = b"\x00" * ((width * 3 + 1) * rows_per_block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(height // rows_per_block):
        checksum = zlib.adler32(block, checksum)
    stream = (b"\x78\xda" + compressed * (height // rows_per_block)
              + compressor.flush(zlib.Z_FINISH) + struct.pack(">I", checksum))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream)
            + png_chunk(b"IEND", b""))


MEASURE = """
import json, resource, sys
from dfd.runtime.images import ImageError, decode_image

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

path, max_pixels, more_memory_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if more_memory_mib:  # a read that never ends runs out of this much more, not out of the machine's memory
    limit = (status_kib("VmSize:") << 10) + (more_memory_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
# VmHWM is this process's own peak since exec; ru_maxrss would inherit the parent's peak
before = status_kib("VmHWM:")
try:
    decoded = decode_image(path, max_pixels=max_pixels)
    result = {"shape": list(decoded.rgb.shape), "notes": list(decoded.notes)}
except ImageError as error:
    result = {"error": str(error)}
result["peak_growth_mb"] = (status_kib("VmHWM:") - before) / 1024
print(json.dumps(result))
"""


def decode_in_fresh_process(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, more_memory_mib: int = 0,
                            timeout: float = 120) -> dict:
    """decode_image in a new interpreter, reporting how much its own peak RSS grew (Linux). With
    ``more_memory_mib`` its address space may grow by that much only, so that a read that blocks
    or never ends fails (timeout, MemoryError) instead of hanging the suite or exhausting memory."""
    if not Path("/proc/self/status").exists():
        pytest.skip("the peak RSS is read from /proc/self/status (VmHWM), which is Linux only")
    completed = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(max_pixels), str(more_memory_mib)],
                               capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()[40:340, 60:460]  # 300x400 RGB


# --- normal images: same pixels as the reference -----------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_colour_files_decode_exactly_as_the_reference(tmp_path, photo, suffix):
    path = write(tmp_path / f"photo{suffix}", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    decoded = decode_image(path)
    assert isinstance(decoded, DecodedImage)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.flags.c_contiguous
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    assert decoded.notes == ()
    np.testing.assert_array_equal(decode_image(path.read_bytes()).rgb, decoded.rgb)


def test_progressive_jpeg_with_trailing_bytes_is_complete(tmp_path, photo):
    path = write(tmp_path / "progressive.jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                 cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 4)
    decoded = decode_image(path.read_bytes() + b"appended by a phone camera")
    assert decoded.notes == ()
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))


def test_non_ascii_path(tmp_path, photo):
    path = write(tmp_path / "ascii.png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    unicode_path = tmp_path / "фото_写真.png"
    unicode_path.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(decode_image(unicode_path).rgb, photo)
    np.testing.assert_array_equal(decode_image(str(unicode_path)).rgb, photo)


def test_grayscale_png_is_expanded_like_imread(tmp_path, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    path = write(tmp_path / "gray.png", gray)
    decoded = decode_image(path)
    assert decoded.notes == ("grayscale expanded to RGB",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    np.testing.assert_array_equal(decoded.rgb, np.repeat(gray[:, :, None], 3, axis=2))


def test_rgba_png_drops_alpha_like_imread(tmp_path, photo):
    alpha = np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None, :].repeat(photo.shape[0], 0)
    bgra = np.dstack([cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), alpha])
    path = write(tmp_path / "rgba.png", bgra)
    decoded = decode_image(path)
    assert decoded.notes == ("alpha channel dropped",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    np.testing.assert_array_equal(decoded.rgb, photo)


def test_16_bit_png_keeps_the_high_byte_like_imread(tmp_path, photo):
    deep = photo.astype(np.uint16) * 257 + np.arange(photo.shape[1], dtype=np.uint16)[None, :, None]
    path = write(tmp_path / "deep.png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    decoded = decode_image(path)
    assert decoded.notes == ("16-bit scaled to 8-bit (high byte kept)",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    np.testing.assert_array_equal(decoded.rgb, (deep >> 8).astype(np.uint8))


def test_16_bit_gray_tiff_is_described_by_the_unchanged_probe(tmp_path, photo):
    gray16 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 256
    path = write(tmp_path / "gray16.tiff", gray16)
    decoded = decode_image(path)
    assert decoded.notes == ("grayscale expanded to RGB", "16-bit scaled to 8-bit")
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))


def test_a_float_tiff_is_refused_for_its_samples_not_as_corrupt(tmp_path, photo):
    """cv2.imread (the reference) cannot read float samples either; the message said the valid
    file's data was corrupt."""
    path = write(tmp_path / "float.tiff", photo.astype(np.float32) / 255)
    assert cv2.imread(str(path)) is None
    with pytest.raises(ImageError, match=r"TIFF with float32 samples \(3 channel\(s\)\), which OpenCV decodes only "
                                         r"unchanged.*convert it to 8- or 16-bit integer samples"):
        decode_image(path)


def test_cmyk_jpeg_is_converted_like_imread(tmp_path, photo):
    from PIL import Image as image_module

    path = tmp_path / "cmyk.jpg"
    image_module.fromarray(photo).convert("CMYK").save(path, quality=95)
    decoded = decode_image(path)
    assert len(decoded.notes) == 1 and "CMYK" in decoded.notes[0]
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    assert np.abs(decoded.rgb.astype(int) - photo).mean() < 10  # really the photo


def test_cmyk_tiff_is_converted_like_imread_and_noted_as_cmyk(tmp_path, photo):
    """Its fourth channel (black ink) was noted as "alpha channel dropped"."""
    from PIL import Image as image_module

    path = tmp_path / "cmyk.tif"
    image_module.fromarray(photo).convert("CMYK").save(path)
    decoded = decode_image(path)
    assert decoded.notes == ("CMYK converted to RGB",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    assert np.abs(decoded.rgb.astype(int) - photo).mean() < 10
    rgba = write(tmp_path / "rgba.tiff", np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)]))
    assert decode_image(rgba).notes == ("alpha channel dropped",)


def test_exif_orientation_is_applied_and_noted(tmp_path, photo):
    from PIL import Image as image_module

    image = image_module.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    decoded = decode_image(path)
    assert decoded.rgb.shape == (400, 300, 3)
    assert decoded.notes == ("rotated/flipped upright as EXIF orientation 6 asks",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    # a TIFF, whose file OpenCV 4.14's imread cannot read (the same bytes decode from memory):
    # rotated as the JPEG is, turned 90 degrees clockwise
    tiff = tmp_path / "rotated.tif"
    image.save(tiff, exif=exif.tobytes())
    decoded = decode_image(tiff)
    assert decoded.notes == ("rotated/flipped upright as EXIF orientation 6 asks",)
    np.testing.assert_array_equal(decoded.rgb, np.rot90(photo, k=-1))


def test_one_pixel_image(tmp_path):
    path = write(tmp_path / "dot.png", np.array([[[10, 20, 30]]], dtype=np.uint8))
    decoded = decode_image(path)
    assert decoded.rgb.tolist() == [[[30, 20, 10]]] and decoded.notes == ()


def test_32_bit_bmp_and_alpha_webp(tmp_path, photo):
    bgra = np.dstack([cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), np.full(photo.shape[:2], 200,
                                                                          np.uint8)])
    bmp = write(tmp_path / "alpha.bmp", bgra)
    decoded = decode_image(bmp)
    assert decoded.notes == ("fourth (alpha) channel dropped",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(bmp))
    webp = write(tmp_path / "alpha.webp", bgra, cv2.IMWRITE_WEBP_QUALITY, 101)  # lossless
    decoded = decode_image(webp)
    assert decoded.notes == ("alpha channel dropped",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(webp))
    np.testing.assert_array_equal(decoded.rgb, photo)


@pytest.mark.parametrize("suffix, params", [
    (".png", ()), (".jpg", ()), (".bmp", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101))])
def test_header_sizes_are_read_before_decoding(tmp_path, suffix, params):
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = write(tmp_path / f"odd{suffix}", image, *params)
    with pytest.raises(ImageError, match="53x37"):
        decode_image(path, max_pixels=1)


def _pillow_bytes(image: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image as image_module

    buffer = io.BytesIO()
    image_module.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def _encoded(suffix: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


SIZED_BY_HEADER = {  # formats whose size is parsed here; OpenCV decodes each at full size only
    "TIFF": lambda im: _encoded(".tiff", im),
    "TIFF big-endian": lambda im: _pillow_bytes(im, "TIFF", byteorder=">"),
    "BigTIFF": lambda im: _pillow_bytes(im, "TIFF", big_tiff=True),
    "PPM": lambda im: _encoded(".ppm", im),
    "PGM with comments": lambda im: b"P5\n# made by hand\n53 # width\n37\n255\n" + im[:, :, 1].tobytes(),
    "PAM": lambda im: _encoded(".pam", im),
    "PFM": lambda im: _encoded(".pfm", im.astype(np.float32) / 255),
    "GIF": lambda im: _encoded(".gif", im),
    "JP2": lambda im: _pillow_bytes(im, "JPEG2000"),
    "J2K codestream": lambda im: _pillow_bytes(im, "JPEG2000", no_jp2=True),
    "Sun raster": lambda im: _encoded(".sr", im),
    "Sun raster, gray": lambda im: _encoded(".sr", im[:, :, 0]),
    "Radiance HDR": lambda im: _encoded(".hdr", im.astype(np.float32) / 255),
    # a header line of 127 bytes ends where C's fgets(128) cuts it, and the line break after it
    # is then the blank line that ends the header, as OpenCV's reader reads it
    "Radiance HDR, long line": lambda im: _encoded(".hdr", im.astype(np.float32) / 255).replace(
        b"rgbe\n\n-Y", b"rgbe\n#" + b"x" * 126 + b"\n-Y", 1),
}


@pytest.mark.parametrize("kind", SIZED_BY_HEADER)
def test_other_formats_are_sized_from_their_header_and_decode_as_the_reference(kind):
    image = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = SIZED_BY_HEADER[kind](image)
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(data).rgb, reference)
    with pytest.raises(ImageError, match="53x37 \\(1961 pixels\\) is above the limit of 1 pixel; OpenCV can only decode"):
        decode_image(data, max_pixels=1)


def test_sized_formats_still_describe_their_colours_and_pages():
    gray16 = np.random.default_rng(3).integers(0, 65536, (37, 53), dtype=np.uint16)
    assert decode_image(_encoded(".pgm", gray16)).notes == ("grayscale expanded to RGB", "16-bit scaled to 8-bit")
    image = np.random.default_rng(4).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    from PIL import Image as image_module

    pages = _pillow_bytes(image, "TIFF", save_all=True, append_images=[image_module.fromarray(image[::-1])])
    decoded = decode_image(pages)
    assert decoded.notes == ("TIFF holds more than one page: the first is used",)
    np.testing.assert_array_equal(decoded.rgb, image)


def _box(kind: bytes, body: bytes) -> bytes:
    """An ISO base media file box (AVIF/HEIF)."""
    return struct.pack(">I", 8 + len(body)) + kind + body


@pytest.mark.parametrize("header", [
    b"P6\n40000 40000\n255\n",
    b"P7\nWIDTH 40000\nHEIGHT 40000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n",
    b"GIF89a" + struct.pack("<HH", 40000, 40000),
    # classic TIFF, one directory holding ImageWidth and ImageLength (LONG), no next directory
    b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, 40000)
    + struct.pack("<HHII", 257, 4, 1, 40000) + struct.pack("<I", 0),
    # the same with the sizes typed SLONG, which libtiff reads as well (the walk gave up on it)
    b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + struct.pack(">HHII", 256, 9, 1, 40000)
    + struct.pack(">HHII", 257, 9, 1, 40000) + struct.pack(">I", 0),
    # an orientation tag of a type no reader takes does not keep the size from being read
    b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 3) + struct.pack("<HHII", 256, 4, 1, 40000)
    + struct.pack("<HHII", 257, 4, 1, 40000) + struct.pack("<HHII", 274, 5, 1, 0) + struct.pack("<I", 0),
    b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, 40000, 40000, 0, 0),
    # Sun raster, run-length encoded: a small file may hold a huge image
    struct.pack(">8I", 0x59A66A95, 40000, 40000, 8, 0, 2, 0, 0),
    # Radiance HDR, its scanlines run-length encoded and decoded to floats (12 bytes a pixel), after
    # a comment longer than any fixed-size read
    b"#?RADIANCE\n# " + b"x" * 70000 + b"\nFORMAT=32-bit_rle_rgbe\n\n-Y 40000 +X 40000\n",
    # AVIF: ftyp, then meta (a full box) / iprp / ipco holding a thumbnail's ispe and the image's
    b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif" + _box(b"meta", bytes(4) + _box(b"iprp", _box(
        b"ipco", _box(b"ispe", bytes(4) + struct.pack(">II", 160, 160))
        + _box(b"ispe", bytes(4) + struct.pack(">II", 40000, 40000))))),
], ids=["PPM", "PAM", "GIF", "TIFF", "TIFF SLONG", "TIFF odd orientation", "J2K", "Sun raster", "Radiance HDR",
         "AVIF"])
def test_a_huge_header_of_another_format_is_refused_before_decoding(header, monkeypatch):
    """A few bytes claiming 1600 MP: refused from the header (before, OpenCV's exception for images
    above 2^30 pixels escaped decode_image and ended a whole batch; Sun raster and Radiance HDR
    were decoded first: a 6 MB HDR of 100 MP took 1.5 GB before the limit refused it)."""
    monkeypatch.setattr(images.cv2, "imdecode", lambda *args: pytest.fail("decoded"))
    with pytest.raises(ImageError, match="40000x40000 \\(1600.0 MP\\) is above the limit of 64.0 MP"):
        decode_image(header + bytes(1000))


def test_the_refusal_counts_the_memory_a_float_format_decodes_into():
    """Radiance HDR and PFM decode to 32-bit floats before the 8-bit result (measured: 1.5 GB for
    100 MP of HDR), which the message put at the 3 bytes a pixel of the result."""
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 10000 +X 10000\n"
    with pytest.raises(ImageError, match="at full size \\(about 1.4 GiB\\)"):
        decode_image(hdr + bytes(100))
    with pytest.raises(ImageError, match="at full size \\(about 286.1 MiB\\)"):
        decode_image(b"P6\n10000 10000\n255\n" + bytes(100))
    with pytest.raises(ImageError, match="at full size \\(about 29.3 KiB\\)"):  # it read "about 0.0 GiB"
        decode_image(b"P6\n100 100\n255\n" + bytes(100), max_pixels=1000)


def test_opencv_exceptions_become_image_errors_and_unsized_formats_keep_the_limit(monkeypatch):
    """Above OpenCV's own limit (2^30 pixels) its decode raises, which becomes an ImageError. A
    format no parser here sizes (OpenEXR where OPENCV_IO_ENABLE_OPENEXR switches it on; stood for
    by a Sun raster whose header goes unread) is refused after decoding when above max_pixels."""
    huge = struct.pack(">8I", 0x59A66A95, 40000, 40000, 24, 0, 1, 0, 0) + bytes(1000)
    with pytest.raises(ImageError, match="OpenCV could not decode it: the image is larger than OpenCV decodes"):
        decode_image(huge, max_pixels=2**31)
    small = _encoded(".sr", np.zeros((37, 53, 3), np.uint8))
    monkeypatch.setattr(images, "read_header", lambda data: None)
    assert decode_image(small).rgb.shape == (37, 53, 3)
    with pytest.raises(ImageError, match="image 53x37 \\(1961 pixels\\) is above the limit of 1 pixel"):
        decode_image(small, max_pixels=1)


# --- memory safety -----------------------------------------------------------------------------

def test_default_limit_is_64_megapixels():
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_huge_png_is_refused_from_its_header_without_allocating(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(black_png(20000, 20000))
    result = decode_in_fresh_process(path, DEFAULT_MAX_PIXELS)
    assert "20000x20000 (400.0 MP) is above the limit of 64.0 MP" in result["error"]
    assert "Convert it to JPEG, or raise the limit (--max-pixels of the dfd-export command, max_pixels of Detector.open or dfd_options)" in result["error"]
    # the full image is 1144 MiB; refusing it costs only reading the 1 MB file
    assert result["peak_growth_mb"] < 50


def test_large_jpeg_is_decoded_reduced_without_the_full_image(tmp_path):
    gradient = np.linspace(0, 255, 6000, dtype=np.float32)
    image = np.dstack([gradient[None, :].repeat(4000, 0), gradient[:4000, None].repeat(6000, 1),
                       np.full((4000, 6000), 90, np.float32)]).astype(np.uint8)
    path = write(tmp_path / "large.jpg", image)
    del image, gradient
    result = decode_in_fresh_process(path, 400_000)
    assert result["shape"] == [500, 750, 3]  # 1/4 gives 1500x1000 = 1.5 MP > 0.4 MP
    assert result["notes"] == ["downscaled 1/8 at decode (image 6000x4000 above "
                               "max_pixels=400000)"]
    assert result["peak_growth_mb"] < 30  # the full image alone is 69 MiB
    full = decode_in_fresh_process(path, DEFAULT_MAX_PIXELS)  # control: the measure sees it
    assert full["shape"] == [4000, 6000, 3] and full["peak_growth_mb"] > 60
    reduced = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
    np.testing.assert_array_equal(decode_image(path, max_pixels=400_000).rgb,
                                  cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB))


def _progressive_jpeg(rgb: np.ndarray, sampling: int, claimed: tuple[int, int] | None = None) -> bytes:
    """A progressive JPEG of ``rgb``, or with ``claimed`` (width, height) written into its frame
    header: a file of 1 KB that says it is huge, as a crafted upload does."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    data = bytearray(encoded.tobytes())
    if claimed is not None:
        frame = data.index(b"\xff\xc2")
        data[frame + 5:frame + 9] = claimed[1].to_bytes(2, "big") + claimed[0].to_bytes(2, "big")
    return bytes(data)


def test_a_progressive_jpeg_is_decoded_reduced_only_while_its_coefficients_fit_the_limit(tmp_path, photo):
    """libjpeg holds a progressive JPEG's coefficients for the whole image whatever the reduction:
    a 1 KB file claiming 32000x32000 pixels took 6 GB and 14 s "decoded at 1/8" with the default
    limit. Above the limit, one is decoded reduced only while its coefficients take no more than a
    4:4:4 progressive JPEG within the limit (6 bytes a pixel): a 4:2:0 one up to twice the limit."""
    bomb = _progressive_jpeg(photo[:16, :16], cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, claimed=(4000, 4000))
    with pytest.raises(ImageError, match=r"JPEG image 4000x4000 \(16.0 MP\) is above the limit of 1.0 MP and "
                                         r"progressive \(or multi-scan\): libjpeg holds every coefficient of the "
                                         r"full-size image whatever the reduction asked for, about 91.6 MiB, .* "
                                         r"Re-encode it as a baseline JPEG, or raise the limit"):
        decode_image(bomb, max_pixels=1_000_000)
    arithmetic = bomb.replace(b"\xff\xc2", b"\xff\xca", 1)  # arithmetic-coded progressive (SOF10): libjpeg decodes it
    with pytest.raises(ImageError, match=r"JPEG image 4000x4000 .* progressive \(or multi-scan\)"):
        decode_image(arithmetic, max_pixels=1_000_000)
    # the budget is what a 4:4:4 one at the limit takes: 6 bytes a pixel, 11.4 MiB at 2 MP
    with pytest.raises(ImageError, match=r"about 14.6 MiB, more than the 11.4 MiB"):
        decode_image(_progressive_jpeg(photo[:16, :16], cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, claimed=(1600, 1600)),
                     max_pixels=2_000_000)
    pixels = photo.shape[0] * photo.shape[1]  # 120,000: 400x300
    limit = pixels * 2 // 3  # above it, and a 4:2:0 file's 3 bytes a pixel are within 6 bytes a pixel of it
    subsampled = decode_image(_progressive_jpeg(photo, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420), max_pixels=limit)
    assert subsampled.rgb.shape == (150, 200, 3) and subsampled.reduction == 2
    with pytest.raises(ImageError, match=r"progressive \(or multi-scan\)"):
        decode_image(_progressive_jpeg(photo, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), max_pixels=limit)
    assert decode_image(_progressive_jpeg(photo, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), max_pixels=pixels).reduction == 1


def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def _lossless_jpeg(width: int, height: int, components: int) -> bytes:
    """A lossless JPEG (SOF3, predictor 1) whose every difference is 0: flat grey, a few bytes."""
    ids = range(1, components + 1)
    frame = bytes([8]) + struct.pack(">HH", height, width) + bytes([components]) + b"".join(bytes([c, 0x11, 0]) for c in ids)
    huffman = _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")  # one 1-bit code: difference 0
    scan = _segment(0xDA, bytes([components]) + b"".join(bytes([c, 0]) for c in ids) + bytes([1, 0, 0]))
    return b"\xff\xd8" + _segment(0xC3, frame) + huffman + scan + bytes(-(-width * height * components // 8)) + b"\xff\xd9"


def test_a_lossless_jpeg_is_held_to_the_limit_as_formats_that_cannot_be_decoded_reduced():
    """libjpeg ignores the reduction for a lossless JPEG: a 97-byte file claiming 30000x30000 pixels
    was decoded whole (7.8 GB), and one of 3 MP under a 0.2 MP limit was scored, noted as
    "downscaled 1/4" though nothing was. A grayscale one, which OpenCV decodes only unchanged, was
    told to convert its samples to 8-bit, which they are."""
    with pytest.raises(ImageError, match=r"lossless JPEG image 2000x1500 \(3.0 MP\) is above the limit of 0.2 MP; "
                                         r"OpenCV can only decode lossless JPEG at full size .* Convert it to a "
                                         r"baseline JPEG, or raise the limit"):
        decode_image(_lossless_jpeg(2000, 1500, 3), max_pixels=200_000)
    with pytest.raises(ImageError, match=r"lossless JPEG with uint8 samples \(1 channel\(s\)\), which OpenCV decodes "
                                         r"only unchanged, .*; re-encode it \(PNG, or a baseline JPEG\)"):
        decode_image(_lossless_jpeg(8, 8, 1))


def test_a_jpeg_of_more_scans_than_any_encoder_writes_is_refused_before_decoding(photo):
    """Each progressive scan is a pass over every coefficient: a crafted 110 KB file of 8000 scans
    claiming 128 MP took 107 s of CPU. The scans a JPEG may ask for are bounded by 100 passes over
    a limit-sized image's coefficients; a real progressive photograph (about 10 scans) is decoded."""
    data = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    limit = photo.shape[0] * photo.shape[1]
    assert decode_image(data, max_pixels=limit).rgb.shape == photo.shape
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    repeated = data[:end] + data[last_scan:end] * 300 + data[end:]
    with pytest.raises(ImageError, match=r"JPEG image 400x300 has 3\d\d scans, each a pass over the coefficients of "
                                         r"the whole image .* more than 100 passes"):
        decode_image(repeated, max_pixels=limit)
    # the bound is on scans times coefficients: at the default limit the same file is decoded
    assert decode_image(repeated).rgb.shape == photo.shape


def test_smallest_sufficient_jpeg_reduction_is_chosen(tmp_path, photo):
    path = write(tmp_path / "photo.jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    assert decode_image(path, max_pixels=30_000).rgb.shape == (150, 200, 3)  # 1/2 just fits
    decoded = decode_image(path, max_pixels=29_999)  # 150x200 too big, 75x100 fits
    assert decoded.rgb.shape == (75, 100, 3)
    assert decoded.notes == ("downscaled 1/4 at decode (image 400x300 above max_pixels=29999)",)
    reduced = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    np.testing.assert_array_equal(decoded.rgb, cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB))
    with pytest.raises(ImageError, match="too large even decoded at 1/8"):
        decode_image(path, max_pixels=1000)


def test_a_reduced_decode_knows_the_full_size_face_boxes_are_given_in(tmp_path, photo):
    """Boxes (the reference's RetinaFace on cv2.imread) are in full-size pixels: a reduced decode
    carries its reduction and the full size, turned as EXIF orientation turns the image."""
    from PIL import Image as image_module

    path = write(tmp_path / "photo.jpg", cv2.cvtColor(photo[:, :399], cv2.COLOR_RGB2BGR))  # 399x300
    decoded = decode_image(path, max_pixels=29_999)
    assert decoded.rgb.shape == (75, 100, 3)  # ceil(300/4) x ceil(399/4)
    assert (decoded.reduction, decoded.full_size_hw) == (4, (300, 399))
    image = image_module.fromarray(photo[:, :399])
    exif = image.getexif()
    exif[0x0112] = 6  # rotated a quarter turn: cv2.imread gives 399 rows of 300
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    decoded = decode_image(tmp_path / "rotated.jpg", max_pixels=29_999)
    assert decoded.rgb.shape == (100, 75, 3)
    assert (decoded.reduction, decoded.full_size_hw) == (4, (399, 300))
    full = decode_image(tmp_path / "rotated.jpg")
    assert (full.reduction, full.full_size_hw) == (1, (399, 300))


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_turned_jpeg_whose_reduced_decode_is_square_keeps_its_full_size_turned(tmp_path, orientation):
    """400x396 reduces to 50x50 at 1/8 either way round, so the decode's shape cannot tell whether
    the image was turned; the EXIF orientation does (it gave 396x400, and a face box with y in
    396..400 was refused as outside the image)."""
    from PIL import Image as image_module

    image = image_module.fromarray(np.full((396, 400, 3), 90, np.uint8))  # 400 wide, 396 high
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned{orientation}.jpg"
    image.save(path, exif=exif.tobytes())
    assert reference_decode(path).shape[:2] == (400, 396)  # what cv2.imread gives, full size
    decoded = decode_image(path, max_pixels=2500)
    assert decoded.rgb.shape == (50, 50, 3)
    assert (decoded.reduction, decoded.full_size_hw) == (8, (400, 396))
    upright = tmp_path / "upright.jpg"
    image.save(upright)
    assert decode_image(upright, max_pixels=2500).full_size_hw == (396, 400)


# --- bad input -----------------------------------------------------------------------------------

def test_missing_file_directory_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        decode_image(tmp_path / "nothing.png")
    with pytest.raises(ImageError, match="is a directory"):
        decode_image(tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        decode_image(empty)
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        decode_image(b"")
    nul = "cannot read image file 'a\\x00b.png': its name holds a NUL character, which no file name may hold"
    with pytest.raises(ImageError, match=re.escape(nul)):  # the same words on every Python
        decode_image("a\x00b.png")


def test_links_pipes_and_devices_are_refused_without_reading(tmp_path):
    """A named pipe would block the read and /dev/zero would never end it: they are decoded in a
    child process with a time limit and 1 GiB more memory, so that a regression fails this test
    instead of hanging the suite or exhausting memory."""
    (tmp_path / "broken.jpg").symlink_to("gone.jpg")
    with pytest.raises(ImageError, match=r"broken.jpg' is a broken symbolic link \(to gone.jpg\)"):
        decode_image(tmp_path / "broken.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(ImageError, match="cannot read image file .*loop.jpg.*symbolic links"):
        decode_image(tmp_path / "loop.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    for path, refusal in ((tmp_path / "pipe.jpg", "is a named pipe (FIFO), not an image file"),
                          (Path("/dev/zero"), "/dev/zero' is a character device")):
        assert refusal in decode_in_fresh_process(path, more_memory_mib=1024, timeout=30)["error"]


def test_text_file_and_random_bytes_are_not_images(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="is not an image OpenCV can decode"):
        decode_image(text)
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="is not an image OpenCV can decode"):
        decode_image(noise)


def test_silenced_opencv_leaves_the_error_to_decode_image(tmp_path):
    """OpenCV logs a broken PNG header on the process's own stderr (fd 2, past Python's
    sys.stderr); once silenced, the ImageError that names the file is all that is said."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    script = ("import sys\n"
              "from dfd.runtime.images import decode_image, silence_opencv_log\n"
              "if sys.argv[2] == 'silenced':\n    silence_opencv_log()\n"
              "try:\n    decode_image(sys.argv[1])\nexcept ValueError as exc:\n    print(exc)\n")
    default, silenced = (subprocess.run([sys.executable, "-c", script, str(broken), mode], capture_output=True,
                                        text=True, check=True) for mode in ("default", "silenced"))
    assert "IHDR chunk shall be first" in default.stderr  # OpenCV does log this file
    assert silenced.stderr == "" and "is not an image OpenCV can decode" in silenced.stdout


def test_corrupt_png_data(tmp_path, photo):
    data = bytearray(cv2.imencode(".png", photo)[1].tobytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    with pytest.raises(ImageError, match="PNG data is corrupt"):
        decode_image(bytes(data))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_png(photo, keep):
    data = cv2.imencode(".png", photo)[1].tobytes()
    with pytest.raises(ImageError, match="PNG data is truncated"):
        decode_image(data[:int(len(data) * keep)])


def _jpeg_kinds(photo: np.ndarray) -> dict[str, bytes]:
    small = cv2.cvtColor(cv2.resize(photo, (80, 60), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    baseline = _encoded(".jpg", small)
    app = b"\xff\xe2" + struct.pack(">H", 1202) + bytes(range(256)) * 4 + bytes(176)  # a 1200-byte APP2
    return {
        "baseline": baseline,
        "progressive": cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "restart intervals": cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes(),
        "grayscale progressive": cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_BGR2GRAY),
                                              [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "APP segment": baseline[:2] + app + baseline[2:],
    }


@pytest.mark.parametrize("kind", ["baseline", "progressive", "restart intervals", "grayscale progressive",
                                  "APP segment"])
def test_a_jpeg_cut_anywhere_decodes_as_imread_reads_the_file(tmp_path, photo, kind):
    """The reference's cv2.imread decodes a JPEG that ends early (grey where data is missing);
    cv2.imdecode refuses the same bytes since OpenCV 4.10, so a cut JPEG the reference scores was
    refused. At every 5th cut point, at full size and reduced: imread's pixels, or imread's refusal."""
    data = _jpeg_kinds(photo)[kind]
    path = tmp_path / "cut.jpg"
    decoded_some = refused_some = 0
    for end in range(3, len(data), 5):
        path.write_bytes(data[:end])
        # 2560: decoded at 1/2, which a progressive 4:2:0 80x60's coefficients (15 KiB) allow
        for flag, max_pixels in ((cv2.IMREAD_COLOR, DEFAULT_MAX_PIXELS), (cv2.IMREAD_REDUCED_COLOR_2, 2560)):
            expected = cv2.imread(str(path), flag)
            if expected is None:
                refused_some += 1
                with pytest.raises(ImageError):
                    decode_image(path, max_pixels=max_pixels)
                continue
            decoded_some += 1
            decoded = decode_image(path, max_pixels=max_pixels)
            np.testing.assert_array_equal(decoded.rgb, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB), err_msg=str(end))
            assert any("truncated" in note or "ends early" in note for note in decoded.notes), (end, decoded.notes)
    assert decoded_some > 100 and refused_some > 10


def test_a_cut_photograph_is_scored_from_what_is_there(tmp_path, photo):
    """The photograph cut 2 bytes short (its end-of-image marker only) decodes to the whole image."""
    data = _encoded(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    decoded = decode_image(data[:-2])
    np.testing.assert_array_equal(decoded.rgb, decode_image(data).rgb)
    assert decoded.notes == ("JPEG data is truncated (no end-of-image marker after the image data): OpenCV "
                             "decoded what was present, as cv2.imread does; no edge of the image is grey fill (only "
                             "the end marker was missing, or a progressive JPEG lacks later scans, which lowers "
                             "detail throughout)",)


def _grey_lines(pixels: np.ndarray) -> int:
    """How many whole rows at the end of ``pixels`` are mid-grey, one row at a time."""
    count = 0
    while count < len(pixels) and (pixels[len(pixels) - 1 - count] == 128).all():
        count += 1
    return count


def test_a_cut_jpeg_says_how_much_of_it_is_grey_fill(tmp_path, photo):
    """The note said "filled the rest" whether a few rows or nearly all of the image were the
    decoder's grey: a score from an image that is mostly fill says little about it."""
    from PIL import Image as image_module

    data = _encoded(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    path = tmp_path / "cut.jpg"
    for fifths in (1, 4):
        path.write_bytes(data[:len(data) * fifths // 5])
        expected = reference_decode(path)
        height, rows = expected.shape[0], _grey_lines(expected)
        assert 0 < rows < height
        assert decode_image(path).notes[-1].endswith(
            f"filled the rest with flat grey, as cv2.imread does: {100 * rows / height:.0f} % of the image (its bottom "
            f"{rows} of {height} rows) is fill")
    # turned upright by EXIF orientation 6 (90 degrees clockwise), the band is at the left
    image = image_module.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6
    stored = io.BytesIO()
    image.save(stored, format="JPEG", exif=exif.tobytes())
    path.write_bytes(stored.getvalue()[:len(stored.getvalue()) // 2])
    expected = reference_decode(path)
    width, columns = expected.shape[1], _grey_lines(expected.transpose(1, 0, 2)[::-1])
    assert 0 < columns < width
    assert decode_image(path).notes[-1].endswith(f"(its left {columns} of {width} columns) is fill")


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_jpeg_cut_and_given_an_end_marker_again_says_how_much_is_fill(tmp_path, photo, progressive, capfd):
    """Scan data cut short and an end marker put after it (a repair tool, a cut upload) decoded to
    98 % grey fill with no note: the header walk sees a complete file. An image whose own edge is
    that flat grey, complete, has no such note."""
    data = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])[1]
    data = data.tobytes()
    last_scan = data.rfind(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:last_scan + (len(data) - last_scan) // 3] + b"\xff\xd9")
    expected = reference_decode(path)
    height, rows = expected.shape[0], _grey_lines(expected)
    if progressive:  # the last scan refines detail: cut, it leaves no grey band, and nothing is claimed
        assert rows == 0 and not any("ends early" in note for note in decode_image(path).notes)
        return
    assert 0 < rows < height
    note = (f"JPEG image data ends early (its end marker follows a cut scan): OpenCV decoded what was present and "
            f"filled the rest with flat grey, as cv2.imread does: {100 * rows / height:.0f} % of the image (its bottom "
            f"{rows} of {height} rows) is fill")
    with capturing_decoder_messages():  # the CLI's case: the probe's own libjpeg warning is captured
        assert decode_image(path).notes[-1] == note
        # a second picture after the end marker (a multi-picture file) does not hide it
        path.write_bytes(path.read_bytes() + data)
        assert decode_image(path).notes[-1] == note
    footer = photo.copy()
    footer[-40:] = 128  # a flat mid-grey band of its own, exactly the decoder's fill
    path.write_bytes(_encoded(".jpg", cv2.cvtColor(footer, cv2.COLOR_RGB2BGR)))
    assert _grey_lines(reference_decode(path)) > 0
    with capturing_decoder_messages():
        assert decode_image(path).notes == ()
    capfd.readouterr()
    # not captured (the Python API, the C library): no probe, whose skipped bytes libjpeg would have
    # reported on the host's stderr as "Corrupt JPEG data: 1020 extraneous bytes"
    assert decode_image(path).notes == () and "extraneous" not in capfd.readouterr().err


def test_bytes_between_jpeg_markers_are_skipped_as_libjpeg_skips_them(tmp_path, photo):
    """One stray byte after a segment, which libjpeg skips with a warning, made the header walk give
    up: the image was decoded at full size and only then held to the pixel limit (a 5 KB file
    declaring 20000x20000 allocated 2.4 GB before being refused)."""
    data = _encoded(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    app0_end = 4 + struct.unpack(">H", data[4:6])[0]
    path = tmp_path / "junk.jpg"
    path.write_bytes(data[:app0_end] + b"\x00\x13" + data[app0_end:])
    decoded = decode_image(path)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    assert decoded.notes == ("corrupt JPEG data: 2 extraneous byte(s) between markers, skipped as cv2.imread "
                             "skips them",)
    reduced = decode_image(path, max_pixels=40_000)  # sized from the header: decoded at 1/2, not refused
    assert reduced.reduction == 2 and reduced.rgb.shape == (150, 200, 3)


def test_the_limit_message_never_shows_two_equal_sizes():
    """8001x8001 said "(64.0 MP) is above the limit of 64.0 MP"."""
    header = b"P6\n8001 8001\n255\n"
    with pytest.raises(ImageError, match=r"8001x8001 \(64,016,001 pixels\) is above the limit of 64,000,000 pixels"):
        decode_image(header + bytes(100))


def test_zero_sized_image_in_header():
    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    with pytest.raises(ImageError, match=r"zero-sized side \(0x5 pixels\)"):
        decode_image(data)
    bmp = bytearray(cv2.imencode(".bmp", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    bmp[18:22] = struct.pack("<i", -16)  # was "a zero-sized side (-16x16 pixels)"
    with pytest.raises(ImageError, match=r"has a negative side \(-16x16 pixels\)"):
        decode_image(bytes(bmp))


def test_an_encoded_image_over_what_opencv_takes_is_refused_before_it_is_read(tmp_path):
    """A 2.5 GB file behind a JPEG signature was read whole (48 s, 2.7 GB of memory), and then
    failed with OpenCV's internal "Overload resolution failed ... s >= 0 in function 'setSize'"."""
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as file:
        file.write(b"\xff\xd8\xff")
        file.truncate(2**31 + 5)  # sparse: no disk used
    with pytest.raises(ImageError, match=r"huge\.jpg' \(2,147,483,653 bytes\) is over the 2,147,483,647 bytes "
                                         r"OpenCV can decode from one buffer"):
        decode_image(path)
    untouched = np.zeros(2**31, np.uint8)  # calloc'd: its pages are never touched
    with pytest.raises(ImageError, match=r"image bytes \(2,147,483,648 bytes\) is over"):
        decode_image(memoryview(untouched))


def test_unsupported_source_type():
    with pytest.raises(ImageError, match="cannot decode an image from an object of type int"):
        decode_image(42)


# --- numpy arrays --------------------------------------------------------------------------------

def test_arrays_rgb_gray_rgba(photo):
    contiguous = photo.copy()
    decoded = decode_image(contiguous)
    assert decoded.notes == () and np.shares_memory(decoded.rgb, contiguous)
    np.testing.assert_array_equal(decode_image(photo[:, ::-1]).rgb, photo[:, ::-1])
    assert decode_image(photo[:, ::-1]).rgb.flags.c_contiguous

    gray = photo[:, :, 1].copy()
    decoded = decode_image(gray)
    assert decoded.notes == ("grayscale expanded to RGB",)
    np.testing.assert_array_equal(decoded.rgb, np.dstack([gray, gray, gray]))
    single_channel = decode_image(gray[:, :, None])
    assert single_channel.notes == ("grayscale expanded to RGB",)
    np.testing.assert_array_equal(single_channel.rgb, decoded.rgb)

    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    decoded = decode_image(rgba)
    assert decoded.notes == ("alpha channel dropped",)
    np.testing.assert_array_equal(decoded.rgb, photo)
    assert decoded.rgb.flags.c_contiguous


@pytest.mark.parametrize("array", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                   np.zeros((4, 4, 3, 1), np.uint8), np.zeros((4,), np.uint8)])
def test_bad_arrays(array):
    with pytest.raises(ImageError, match=r"must be uint8 HxW or HxWx1 \(gray\), HxWx3 \(RGB\)"):
        decode_image(array)


@pytest.mark.parametrize(("suffix", "expected"), [(".jpg", ".jpg"), (".webp", ""), (".jp2", ""),
                                                  (".png", ""), (".bmp", ""), (".tiff", "")])
def test_encoded_suffix_names_jpeg_by_content(photo, suffix, expected):
    encoded = cv2.imencode(suffix, photo)[1].tobytes()
    assert encoded_suffix(encoded) == expected


def test_zero_sized_array():
    with pytest.raises(ImageError, match="zero-sized side"):
        decode_image(np.zeros((0, 7, 3), np.uint8))


def test_an_array_over_the_pixel_limit_is_refused_as_files_are():
    """Scoring takes several times an image's size again (face localisation), so a caller's
    pixels meet the same limit as a file's; np.zeros maps its pages lazily, so this costs nothing."""
    assert decode_image(np.zeros((10, 10, 3), np.uint8), max_pixels=100).rgb.shape == (10, 10, 3)
    with pytest.raises(ImageError, match=r"image array: image 11x10 \(110 pixels\) is above the limit of 100 pixels"):
        decode_image(np.zeros((10, 11), np.uint8), max_pixels=100)
    with pytest.raises(ImageError, match=r"image array: image 8001x8001 \(64,016,001 pixels\) is above "
                                           r"the limit of 64,000,000 pixels"):
        decode_image(np.zeros((8001, 8001, 3), np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_outside_jpeg_is_noted(photo, fmt):
    """IMREAD_COLOR turns a PNG (eXIf), WebP (EXIF chunk) or TIFF upright as it turns a JPEG, but
    only the JPEG's rotation was reported."""
    from PIL import Image as image_module

    exif = image_module.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    options = {"tiffinfo": {0x0112: 6}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    options.update({"lossless": True} if fmt == "WEBP" else {})
    image_module.fromarray(photo).save(buffer, fmt, **options)
    data = buffer.getvalue()
    decoded = decode_image(data)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded.rgb, expected)
    assert decoded.rgb.shape == (photo.shape[1], photo.shape[0], 3)
    assert "rotated/flipped upright as EXIF orientation 6 asks" in decoded.notes


def test_an_animated_png_notes_that_its_first_frame_is_used(photo):
    from PIL import Image as image_module

    buffer = io.BytesIO()
    image_module.fromarray(photo).save(buffer, "PNG", save_all=True, append_images=[image_module.fromarray(photo[::-1])])
    decoded = decode_image(buffer.getvalue())
    np.testing.assert_array_equal(decoded.rgb, photo)
    assert decoded.notes == ("animated: first frame only",)


@pytest.mark.parametrize("transparency", [None, 0], ids=["opaque", "transparent"])
def test_a_gif_notes_its_first_frame_and_transparency_from_its_blocks(transparency):
    """OpenCV reads an animated GIF's first frame only; its unchanged decode is four-channel even
    for an opaque animation, which the unchanged probe used to report as "alpha channel dropped"."""
    from PIL import Image as image_module

    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 4, (37, 53, 3), dtype=np.uint8) * 80 for _ in range(3)]
    options = {} if transparency is None else {"transparency": transparency}
    still = _pillow_bytes(frames[0], "GIF", **options)
    animated = _pillow_bytes(frames[0], "GIF", save_all=True, duration=100, loop=0,
                             append_images=[image_module.fromarray(frame) for frame in frames[1:]], **options)
    transparency_note = () if transparency is None else ("transparency dropped",)
    for data, notes in ((still, transparency_note), (animated, transparency_note + ("animated: first frame only",))):
        decoded = decode_image(data)
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decoded.rgb, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))
        assert decoded.notes == notes


@pytest.mark.parametrize(("orientation", "band"), [(3, "top {} of {} rows"), (6, "left {} of {} columns"),
                                                   (8, "right {} of {} columns")])
def test_a_turned_jpeg_cut_and_given_an_end_marker_again_says_where_the_fill_is(tmp_path, photo, orientation, band):
    """EXIF orientation turns the decoder's grey band to another edge: the check that looks for it
    before probing must look at every edge, not only the bottom row."""
    from PIL import Image as image_module

    image = image_module.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = orientation
    stored = io.BytesIO()
    image.save(stored, format="JPEG", exif=exif.tobytes())
    data = stored.getvalue()
    last_scan = data.rfind(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:last_scan + (len(data) - last_scan) // 3] + b"\xff\xd9")
    expected = reference_decode(path)
    # the band's lines, last first (as _grey_lines counts them): rows from the top, columns from either side
    lines_last_first = {3: expected[::-1], 6: expected.transpose(1, 0, 2)[::-1], 8: expected.transpose(1, 0, 2)}
    lines, side = _grey_lines(lines_last_first[orientation]), len(lines_last_first[orientation])
    assert 0 < lines < side
    with capturing_decoder_messages():
        assert decode_image(path).notes[-1].endswith(f"(its {band.format(lines, side)}) is fill")


def test_an_array_of_an_encoded_files_bytes_is_refused_with_what_to_pass(photo):
    """``cv2.imencode``'s (N, 1) array (older OpenCV) was scored as a 1-pixel-wide grey image, and
    ``np.frombuffer`` of a file failed as a wrong shape with no word of the bytes it holds."""
    for suffix, name in ((".png", "PNG"), (".jpg", "JPEG"), (".tiff", "TIFF"), (".bmp", "BMP"),
                         (".ppm", r"Netpbm \(PBM/PGM/PPM/PAM/PFM\)"), (".pam", r"Netpbm \(PBM/PGM/PPM/PAM/PFM\)"),
                         (".ras", "Sun raster"), (".hdr", "Radiance HDR")):
        encoded = np.frombuffer(_encoded(suffix, cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)), np.uint8)
        for array in (encoded, encoded.reshape(-1, 1), encoded.reshape(-1, 1, 1)):
            with pytest.raises(ImageError, match=rf"image array of shape \({len(encoded)},.*\) holds the bytes of a "
                                                 rf"{name} file, not pixels; pass array\.tobytes\(\) to decode it"):
                decode_image(array)
        np.testing.assert_array_equal(decode_image(encoded.tobytes()).rgb, decode_image(_encoded(suffix, cv2.cvtColor(
            photo, cv2.COLOR_RGB2BGR))).rgb)
    column = np.arange(40, dtype=np.uint8).reshape(-1, 1)  # a 1-pixel-wide image is still one
    assert decode_image(column).rgb.shape == (40, 1, 3)
    # one whose first pixels spell "BM" and "P5", but not the rest of those headers
    for start in (b"BM\x00\x00\x00\x00", b"P5 x"):
        pixels = np.frombuffer((start + bytes(range(40)))[:40], np.uint8).reshape(-1, 1)
        assert decode_image(pixels).rgb.shape == (40, 1, 3)


def test_a_netpbm_file_with_a_comment_held_in_an_array_is_refused_as_one():
    """An editor's comment pushes the size past the first dozen bytes the format check reads."""
    ppm = b"P6\n# written by an image editor\n4 4\n255\n" + bytes(48)
    with pytest.raises(ImageError, match=r"holds the bytes of a Netpbm \(PBM/PGM/PPM/PAM/PFM\) file"):
        decode_image(np.frombuffer(ppm, np.uint8).reshape(-1, 1))


class _ArrayLike:
    """Neither bytes nor an ndarray, but numpy converts it (a torch tensor has ``__array__`` only)."""

    def __init__(self, protocol: str) -> None:
        setattr(self, protocol, None)


@pytest.mark.parametrize("source, advice", [
    (np.zeros((4, 4, 3), np.uint16), r"dtype uint16; 16-bit pixels convert as a 16-bit file decodes, keeping the "
                                     r"high byte: \(array >> 8\).astype\(np.uint8\)"),
    (np.zeros((4, 4, 3), ">u2"), r"keeping the high byte: \(array >> 8\)"),  # big-endian (a FITS or raw read)
    (_ArrayLike("__array__"), r"object of type _ArrayLike: convert it with np.asarray\(...\) to uint8 RGB pixels"),
    (_ArrayLike("__array_interface__"), r"object of type _ArrayLike: convert it with np.asarray\(...\)"),
])
def test_pixels_of_another_kind_are_refused_with_how_to_convert_them(source, advice):
    with pytest.raises(ImageError, match=advice):
        decode_image(source)


def test_the_byte_limit_counts_a_memoryviews_bytes_not_its_items(monkeypatch):
    monkeypatch.setattr(images, "MAX_ENCODED_BYTES", 32)
    view = memoryview(np.zeros(16, np.uint32))  # 16 items, 64 bytes
    with pytest.raises(ImageError, match=r"image bytes \(64 bytes\) is over the"):
        decode_image(view)


def test_decode_image_file_hashes_the_bytes_it_decoded(tmp_path, photo):
    """The file's pixels and notes as decode_image gives them, with the sha256 of that one read."""
    path = write(tmp_path / "photo.jpg", photo, cv2.IMWRITE_JPEG_QUALITY, 80)
    decoded, sha256 = decode_image_file(path, max_pixels=10_000)
    expected = decode_image(path, max_pixels=10_000)
    np.testing.assert_array_equal(decoded.rgb, expected.rgb)
    assert decoded.notes == expected.notes and decoded.notes  # reduced: the note comes along
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for limit in (0, True):
        with pytest.raises(ValueError, match=f"max_pixels must be a positive integer, got {limit}"):
            decode_image_file(path, max_pixels=limit)
        for source in (path, path.read_bytes(), photo):  # every kind decode_image takes
            with pytest.raises(ValueError, match=f"max_pixels must be a positive integer, got {limit}"):
                decode_image(source, max_pixels=limit)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.png' is empty \(0 bytes\)"):
        decode_image_file(tmp_path / "empty.png")


# --- limits at their bounds, edge cases and helpers ---------------------------------------------

def test_bytes_exactly_at_the_encoded_limit_are_decoded(tmp_path, photo, monkeypatch):
    """The limit is the largest buffer OpenCV takes, so bytes or a file of exactly that size are
    decoded; one byte more is refused, before any read."""
    small = photo[:32, :48]
    data = _encoded(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    monkeypatch.setattr(images, "MAX_ENCODED_BYTES", len(data))
    for source in (data, bytearray(data), memoryview(data), path):
        np.testing.assert_array_equal(decode_image(source).rgb, small)
    monkeypatch.setattr(images, "MAX_ENCODED_BYTES", len(data) - 1)
    with pytest.raises(ImageError, match=rf"image bytes \({len(data):,} bytes\) is over the"):
        decode_image(data)
    with pytest.raises(ImageError, match=rf"photo\.png' \({len(data):,} bytes\) is over the"):
        decode_image(path)


def test_undecodable_bytes_are_named_by_their_size_and_hint_at_a_path_only_when_they_name_a_file(tmp_path):
    """bytes naming a file (os.fsencode of a path) get the hint to pass a path; other undecodable
    bytes, a NUL among them (which os.path.exists refuses), do not."""
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ImageError, match=re.escape(f"image bytes ({len(os.fsencode(path))} bytes) is not an image")
                       + r".*; these bytes name an existing file: pass a path as str or Path$"):
        decode_image(os.fsencode(path))
    for data in (b"no such file", b"not\x00a name"):
        with pytest.raises(ImageError) as raised:
            decode_image(data)
        assert str(raised.value).startswith(f"image bytes ({len(data)} bytes) is not an image OpenCV can decode")
        assert "these bytes name" not in str(raised.value)


@pytest.mark.parametrize("limit", [1.5, 64e6, "64000000", None])
def test_a_max_pixels_that_is_not_an_integer_is_refused(photo, limit):
    with pytest.raises(ValueError, match=re.escape(f"max_pixels must be a positive integer, got {limit!r}")):
        decode_image(photo, max_pixels=limit)


def test_check_rgb_image_names_what_it_got():
    images.check_rgb_image(np.zeros((2, 3, 3), np.uint8), "test", ValueError)
    for array, got in ((np.zeros((4, 0, 3), np.uint8), r"test got an empty image of shape \(4, 0, 3\)"),
                       (np.zeros((0, 4, 3), np.uint8), r"test got an empty image of shape \(0, 4, 3\)"),
                       (np.zeros((2, 2, 3), np.int8), r"test needs an RGB uint8 image \[H, W, 3\], got int8 array of "
                                                      r"shape \(2, 2, 3\)"),
                       ([[0, 0, 0]], r"test needs an RGB uint8 image \[H, W, 3\], got list")):
        with pytest.raises(KeyError, match=got):
            images.check_rgb_image(array, "test", KeyError)


def test_array_sha256_hashes_dtype_shape_and_pixels_in_c_order():
    """The same bytes as another shape or dtype are other pixels; a view is hashed as its copy."""
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert images.array_sha256(rgb) == hashlib.sha256(b"|u1(2, 2, 3)" + rgb.tobytes()).hexdigest()
    assert images.array_sha256(rgb.reshape(2, 6)) != images.array_sha256(rgb)
    assert images.array_sha256(rgb.view(np.int8)) != images.array_sha256(rgb)
    flipped = rgb[:, ::-1]
    assert images.array_sha256(flipped) == images.array_sha256(flipped.copy())
    assert images.array_sha256(rgb.transpose(1, 0, 2)) == images.array_sha256(rgb.transpose(1, 0, 2).copy())


def test_a_socket_and_an_unreadable_file_are_refused_as_files_before_reading(tmp_path, monkeypatch):
    """The file's own problems are ``ImageFileError`` (the C ABI's DFD_E_IO); an empty file is a
    problem of its content, a plain ``ImageError``."""
    import socket

    monkeypatch.chdir(tmp_path)  # a relative name: a socket's path is limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind("socket.jpg")
        with pytest.raises(images.ImageFileError, match=r"'socket.jpg' is a socket, not an image file; only "
                                                        r"regular files are read"):
            decode_image("socket.jpg")
    with pytest.raises(images.ImageFileError, match="'nothing.png' does not exist"):
        decode_image("nothing.png")
    Path("empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="is empty") as raised:
        decode_image("empty.png")
    assert not isinstance(raised.value, images.ImageFileError)
    Path("locked.png").write_bytes(b"\x89PNG")
    monkeypatch.setattr(images.os, "access", lambda path, mode: False)  # root reads a file whatever its mode
    with pytest.raises(images.ImageFileError, match="cannot read image file 'locked.png': permission denied"):
        decode_image("locked.png")


def test_a_file_name_with_a_line_break_is_quoted_escaped(tmp_path):
    """A name's control characters would cut or forge the message's line: repr() escapes them."""
    with pytest.raises(ImageError, match=re.escape(repr(str(tmp_path / "two\nlines.png")) + " does not exist")):
        decode_image(tmp_path / "two\nlines.png")


def test_an_open_file_is_refused_with_what_to_pass(tmp_path):
    """An open file has .read() but no .getvalue(); the advice is the same as for io.BytesIO."""
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG")
    with open(path, "rb") as handle, pytest.raises(ImageError, match=r"object of type BufferedReader: pass its "
                                                                     r"bytes \(\.getvalue\(\) or \.read\(\)\)"):
        decode_image(handle)
    with pytest.raises(ImageError, match=r"object of type BytesIO: pass its bytes"):
        decode_image(io.BytesIO(b"\x89PNG"))


def test_a_format_without_a_parsed_header_is_decoded_and_described_as_imread_reads_it(tmp_path, photo, monkeypatch):
    """A file whose header this module cannot read (an unknown format, a damaged header; stood for
    by files whose header walk is switched off) is decoded plainly and still converted to RGB,
    described by the unchanged probe, and noted when it ends early or the decoder complained."""
    monkeypatch.setattr(images, "read_header", lambda data: None)
    colour = write(tmp_path / "colour.png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    decoded = decode_image(colour)
    np.testing.assert_array_equal(decoded.rgb, photo)
    assert decoded.notes == ()
    gray16 = write(tmp_path / "gray16.png", cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    decoded = decode_image(gray16)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(gray16))
    assert decoded.notes == ("grayscale expanded to RGB", "16-bit scaled to 8-bit")
    data = _encoded(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:len(data) // 2])
    expected = reference_decode(cut)
    rows = _grey_lines(expected)
    assert 0 < rows < expected.shape[0]
    decoded = decode_image(cut)
    np.testing.assert_array_equal(decoded.rgb, expected)
    assert decoded.notes == (f"JPEG data ends early: OpenCV decoded what was present and filled the rest with flat "
                             f"grey, as cv2.imread does: {100 * rows / expected.shape[0]:.0f} % of the image (its "
                             f"bottom {rows} of {expected.shape[0]} rows) is fill",)
    stray = tmp_path / "stray.jpg"
    tables = data.index(b"\xff\xc4")
    stray.write_bytes(data[:tables] + b"\x00\x01\x02" + data[tables:])  # libjpeg skips them, and says so
    with capturing_decoder_messages():
        decoded = decode_image(stray)
    assert decoded.notes == ("decoder: Corrupt JPEG data: 3 extraneous bytes before marker 0xc4",)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(stray))


def test_a_gray_and_alpha_pam_and_a_float_pfm_are_described_by_the_unchanged_probe():
    """Two channels are gray and alpha: both conversions are noted; float samples are noted too."""
    gray_alpha = np.arange(12, dtype=np.uint8).reshape(3, 2, 2) * 20
    pam = (b"P7\nWIDTH 2\nHEIGHT 3\nDEPTH 2\nMAXVAL 255\nTUPLTYPE GRAYSCALE_ALPHA\nENDHDR\n"
           + gray_alpha.tobytes())
    decoded = decode_image(pam)
    assert decoded.notes == ("grayscale expanded to RGB", "alpha channel dropped")
    np.testing.assert_array_equal(decoded.rgb, np.repeat(gray_alpha[:, :, :1], 3, axis=2))
    pfm = _encoded(".pfm", np.random.default_rng(6).random((5, 7, 3)).astype(np.float32))
    decoded = decode_image(pfm)
    assert decoded.notes == ("floating-point pixels converted to 8-bit",)
    reference = cv2.imdecode(np.frombuffer(pfm, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded.rgb, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))


def test_the_unchanged_probe_runs_up_to_its_limit_inclusive(monkeypatch):
    """Above UNCHANGED_PROBE_MAX_PIXELS the colour layout goes undescribed rather than decoded twice."""
    pgm = _encoded(".pgm", np.random.default_rng(7).integers(0, 256, (37, 53), dtype=np.uint8))
    monkeypatch.setattr(images, "UNCHANGED_PROBE_MAX_PIXELS", 37 * 53)
    assert decode_image(pgm).notes == ("grayscale expanded to RGB",)
    monkeypatch.setattr(images, "UNCHANGED_PROBE_MAX_PIXELS", 37 * 53 - 1)
    assert decode_image(pgm).notes == ()


def test_a_huge_pfm_counts_the_float_memory_it_decodes_into():
    """PFM, like Radiance HDR, decodes to 32-bit floats first: 15 bytes a pixel, 1.4 GiB at 100 MP."""
    with pytest.raises(ImageError, match=r"PFM image 10000x10000 \(100.0 MP\) .* at full size \(about 1.4 GiB\)"):
        decode_image(b"PF\n10000 10000\n-1.0\n" + bytes(100))


@pytest.mark.parametrize(("width", "height", "max_pixels", "sizes"), [
    (200, 100, 10_000, "(20000 pixels) is above the limit of 10000 pixels"),  # counted below 0.1 MP
    (400, 250, 1000, "(0.1 MP) is above the limit of 1000 pixels"),  # 100,000 pixels: megapixels from there
])
def test_sizes_in_the_limit_message_switch_to_megapixels_at_100000_pixels(width, height, max_pixels, sizes):
    with pytest.raises(ImageError, match=re.escape(f"{width}x{height} {sizes}")):
        decode_image(f"P6\n{width} {height}\n255\n".encode() + bytes(100), max_pixels=max_pixels)


def test_memory_sizes_use_the_largest_unit_that_keeps_a_digit_before_the_point():
    assert [images._memory_size(size) for size in (1023, 1024, 2**20 - 1, 2**20, 2**30, 3 * 2**30 // 2)] == [
        "1023 bytes", "1.0 KiB", "1024.0 KiB", "1.0 MiB", "1.0 GiB", "1.5 GiB"]


def test_the_decoders_lines_are_given_once_each_the_first_three_in_full():
    assert images._decoder_said(["a", "b", "c"]) == "decoder: a; b; c"
    assert images._decoder_said(["a", "b", "a", "c", "b", "d", "e"]) == "decoder: a; b; c (and 2 more)"


def test_the_fill_note_names_the_edge_with_the_largest_share_of_grey_lines():
    """The edge is chosen by the share of its side that is fill, not by its count of lines: 31 of
    120 rows (26 %, rounded) beat 60 of 400 columns (15 %). An image all grey says so."""
    bgr = np.random.default_rng(8).integers(0, 100, (120, 400, 3), dtype=np.uint8)
    bgr[-31:] = 128
    bgr[:, -60:] = 128
    assert images._what_was_filled(bgr).endswith("26 % of the image (its bottom 31 of 120 rows) is fill")
    assert images._what_was_filled(np.full((8, 6, 3), 128, np.uint8)) == (
        "OpenCV decoded what was present, as cv2.imread does: none of the image was there, it is all grey fill")


def test_encoded_suffix_needs_the_whole_jpeg_signature():
    assert encoded_suffix(b"\xff\xd8\xff\xe0") == ".jpg"
    assert encoded_suffix(b"\xff\xd8\x00\x00") == "" and encoded_suffix(b"") == ""


def test_small_or_gray_arrays_that_begin_like_a_file_signature_are_still_pixels():
    """The bytes of an encoded file come as one byte a row (N, (1,) (1, 1)); a gray image three pixels
    wide, or a column of fewer than 12 pixels, whose first values spell a signature, is pixels."""
    column = np.array([255, 216, 255, 224, 0], np.uint8).reshape(-1, 1)
    np.testing.assert_array_equal(decode_image(column).rgb, np.repeat(column[:, :, None], 3, axis=2))
    gray = np.array([[255, 216, 255], [224, 0, 16], [74, 70, 73], [70, 0, 1]], np.uint8)
    np.testing.assert_array_equal(decode_image(gray).rgb, np.repeat(gray[:, :, None], 3, axis=2))


FILES_OF_OTHER_FORMATS = {  # what the other array test leaves out: both GIF versions, both JPEG 2000 forms
    "WebP": lambda im: _encoded(".webp", im),
    "GIF87a": lambda im: _pillow_bytes(im, "GIF"),
    "GIF89a": lambda im: _encoded(".gif", im),
    "JP2": lambda im: _pillow_bytes(im, "JPEG2000"),
    "J2K codestream": lambda im: _pillow_bytes(im, "JPEG2000", no_jp2=True),
}


@pytest.mark.parametrize("kind", FILES_OF_OTHER_FORMATS)
def test_an_array_of_a_webp_gif_or_jpeg_2000_files_bytes_is_refused_with_what_to_pass(photo, kind):
    data = FILES_OF_OTHER_FORMATS[kind](photo[:16, :16])
    name = {"G": "GIF", "J": "JPEG 2000", "W": "WebP"}[kind[0]]
    with pytest.raises(ImageError, match=rf"holds the bytes of a {name} file, not pixels"):
        decode_image(np.frombuffer(data, np.uint8).reshape(-1, 1))


def test_the_progressive_bounds_hold_at_their_exact_budgets(photo):
    """A 4:2:0 progressive 400x288 JPEG holds 3 bytes of coefficients a pixel (345,600 bytes): at a
    limit of half its pixels that is exactly the 6 bytes a pixel of the budget, which is allowed
    (decoded at 1/2); and 200 scans over them at a limit of its own size are exactly the 100
    passes allowed. A small 4:4:4 one within the limit is decoded whatever its whole-block padding
    (9x9 pixels: 1536 bytes, more than 6 bytes a pixel)."""
    image = photo[:288]
    data = _progressive_jpeg(image, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
    pixels = 400 * 288
    halved = decode_image(data, max_pixels=pixels // 2)
    assert (halved.reduction, halved.rgb.shape) == (2, (144, 200, 3))
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    extra = 200 - data.count(b"\xff\xda")
    scans_200 = data[:end] + data[last_scan:end] * extra + data[end:]
    assert decode_image(scans_200, max_pixels=pixels).rgb.shape == image.shape
    scans_201 = data[:end] + data[last_scan:end] * (extra + 1) + data[end:]
    with pytest.raises(ImageError, match=r"has 201 scans"):
        decode_image(scans_201, max_pixels=pixels)
    tiny = _progressive_jpeg(photo[:9, :9], cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
    assert decode_image(tiny, max_pixels=81).rgb.shape == (9, 9, 3)


def test_a_jpeg_cut_inside_its_longest_segment_decodes_as_imread_reads_the_file(tmp_path, photo):
    """imread's reader, cut inside a segment, skips the rest of it through the end markers it
    supplies: a comment of 65,533 bytes after a progressive JPEG's first scan, cut just inside,
    needs nearly 64 KiB of them before the end marker that finishes the image."""
    data = _progressive_jpeg(photo[:64, :64], cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    comment = b"\xff\xfe" + struct.pack(">H", 65535) + bytes(65533)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:second_scan] + comment[:10])
    expected = reference_decode(path)
    decoded = decode_image(path)
    np.testing.assert_array_equal(decoded.rgb, expected)
    assert decoded.notes[-1].startswith("JPEG data is truncated")


def test_a_cut_jpeg_captured_carries_one_note_not_the_decoders_premature_end(tmp_path, photo):
    """The decoder's warnings about the end it never saw are what the truncation note says."""
    data = _encoded(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:len(data) // 2])
    with capturing_decoder_messages():
        decoded = decode_image(path)
    assert len(decoded.notes) == 1 and decoded.notes[0].startswith("JPEG data is truncated"), decoded.notes
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))


def test_an_array_of_float_pixels_is_refused_with_how_to_convert_it():
    with pytest.raises(ImageError, match=r"dtype float32; float pixels in 0\.\.1 convert with "
                                         r"\(array \* 255\)\.round\(\)\.astype\(np\.uint8\)"):
        decode_image(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("suffix", [".bmp", ".webp"])
def test_a_truncated_bmp_or_webp_is_refused_as_imread_refuses_it(tmp_path, photo, suffix):
    """Only a JPEG is decoded again with end markers after it: a cut BMP or WebP would decode
    them as its missing pixels, where cv2.imread refuses the file."""
    path = tmp_path / f"cut{suffix}"
    data = _encoded(suffix, cv2.cvtColor(photo[:64, :64], cv2.COLOR_RGB2BGR))
    path.write_bytes(data[:len(data) // 2])
    assert cv2.imread(str(path)) is None
    with pytest.raises(ImageError, match=rf"data is truncated \({len(data) // 2} of the {len(data)} bytes the header "
                                         rf"declares\); OpenCV could not decode it"):
        decode_image(path)


def test_a_bmp_shorter_than_its_header_declares_that_decodes_carries_the_note(tmp_path, photo):
    """OpenCV reads a BMP's pixels whatever file size its header gives; the walk's truncation
    still reaches the notes when the first decode succeeds."""
    bmp = bytearray(_encoded(".bmp", cv2.cvtColor(photo[:64, :63], cv2.COLOR_RGB2BGR)))
    bmp[2:6] = struct.pack("<I", len(bmp) + 100)
    path = tmp_path / "declared.bmp"
    path.write_bytes(bytes(bmp))
    decoded = decode_image(path)
    np.testing.assert_array_equal(decoded.rgb, reference_decode(path))
    assert decoded.notes == (
        f"BMP data is truncated ({len(bmp)} of the {len(bmp) + 100} bytes the header declares): OpenCV decoded the "
        f"whole image from what was present, as cv2.imread does (its decoder refuses one whose pixel data is cut, "
        f"so only bytes after that data are missing, or the declared size is wrong)",)


def test_an_undecodable_file_is_named_in_the_error(tmp_path, photo):
    """Errors from the content, not only from reading, name the file as given."""
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=re.escape(f"'{text}' is not an image OpenCV can decode")):
        decode_image(text)
    path = write(tmp_path / "photo.png", cv2.cvtColor(photo[:37, :53], cv2.COLOR_RGB2BGR))
    with pytest.raises(ImageError, match=re.escape(f"'{path}': PNG image 53x37 (1961 pixels) is above the limit")):
        decode_image(path, max_pixels=1000)


def test_an_array_of_another_dtype_is_refused_as_pixels_even_where_its_bytes_spell_a_signature():
    """Only one byte a row is a file's bytes: 16-bit values whose bytes begin like a PNG are pixels
    of the wrong depth, with how to convert them."""
    signature = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(16), np.uint16).reshape(-1, 1)
    with pytest.raises(ImageError, match=r"must be uint8 .* dtype uint16; 16-bit pixels convert"):
        decode_image(signature)

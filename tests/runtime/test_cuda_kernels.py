"""The CUDA kernels without a GPU: NVRTC compiles them, and their math, compiled for the host with
g++, equals OpenCV/NumPy preprocessing and the Python vote.

The host build (tests/runtime/kernel_host/kernel_host.cpp) calls the very header functions the
CUDA kernels call per thread. References: cv2.resize / slicing written from REFERENCE.md, and
runtime/preprocess.py and runtime/vote.py.
"""

from __future__ import annotations

import ctypes
import struct

import cv2
import numpy as np
import pytest

from dfd.runtime import cuda_kernels, preprocess, vote
from host_gpu import load_kernel_host

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
U8P = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
I, LL, D = ctypes.c_int, ctypes.c_longlong, ctypes.c_double


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The kernels' header math compiled for this CPU as a shared library."""
    lib = load_kernel_host(tmp_path_factory.mktemp("kernel_host"))
    image_args = [ctypes.c_void_p, LL, I, I, I]
    lib.host_resize.argtypes = image_args + [I, I, I, U8P]
    lib.host_stream_u8.argtypes = image_args + [I, D, D, D, D, D, U8P]
    lib.host_stream_f32.argtypes = image_args + [I, D, D, D, D, D,
                                                 np.ctypeslib.ndpointer(np.float32)]
    lib.host_float_to_half.argtypes = [np.ctypeslib.ndpointer(np.float32), LL,
                                       np.ctypeslib.ndpointer(np.uint16)]
    lib.host_vote.argtypes = [np.ctypeslib.ndpointer(np.float32), LL,
                              np.ctypeslib.ndpointer(np.float64), np.ctypeslib.ndpointer(np.float64),
                              np.ctypeslib.ndpointer(np.float64)]
    lib.host_softmax.argtypes = [np.ctypeslib.ndpointer(np.float32), LL,
                                 np.ctypeslib.ndpointer(np.float32)]
    lib.host_job_layout.argtypes = [np.ctypeslib.ndpointer(np.int64)]
    return lib


def _image_args(img: np.ndarray) -> tuple:
    """(pointer, pitch, width, height) of a possibly row-padded HxWx3 uint8 view."""
    assert img.strides[1:] == (3, 1)
    return img.ctypes.data, img.strides[0], img.shape[1], img.shape[0]


def host_resize(lib, img: np.ndarray, size: int | tuple[int, int], interpolation: int) -> np.ndarray:
    width, height = (size, size) if isinstance(size, int) else size
    out = np.empty((height, width, 3), np.uint8)
    lib.host_resize(*_image_args(img), 0, width, height, interpolation, out)
    return out


def host_stream(lib, img: np.ndarray, stream: int, box=None, order: int = 0, normalised=False):
    side = 224 if stream == 2 else 252
    box = box or (0.0, 0.0, 0.0, 0.0)
    if normalised:
        out = np.empty((3, side, side), np.float32)
        lib.host_stream_f32(*_image_args(img), order, stream, *box, 1.3, out)
    else:
        out = np.empty((side, side, 3), np.uint8)
        lib.host_stream_u8(*_image_args(img), order, stream, *box, 1.3, out)
    return out


def random_sizes() -> list[tuple[int, int]]:
    """(h, w) pairs: every resize path of OpenCV, 1x1 to 4000x3000, mostly small to stay fast."""
    rng = np.random.default_rng(2026)
    fixed = [(1, 1), (1, 7), (5, 1), (2, 3), (224, 224), (256, 256), (448, 448), (672, 448),
             (512, 768), (449, 449), (224, 1000), (1000, 224), (223, 300), (300, 223), (255, 256),
             (100, 300), (300, 100), (4000, 3000), (3000, 4000), (1500, 2000)]
    drawn = [(int(h), int(w)) for h, w in rng.integers(1, 700, size=(34, 2))]
    return fixed + drawn


SIZES = random_sizes()


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvrtc_compiles_every_kernel_to_ptx(arch, kernel_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))
    ptx = cuda_kernels.compile_ptx(arch).decode()
    assert f".target {arch}" in ptx
    for name in cuda_kernels.KERNEL_NAMES:
        assert f".entry {name}(" in ptx
    [shared] = kernel_cache.glob(f"ptx-{arch}-*.ptx")  # cached for the next call
    assert cuda_kernels.compile_ptx(arch).decode() == ptx
    # the cache's own behaviour, on a copy in a folder of this test's own
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(tmp_path))
    cached = tmp_path / shared.name
    cached.write_bytes(shared.read_bytes())
    # a cache file damaged on disk was handed to the driver as it was; it is compiled again (here
    # by a stand-in for NVRTC, counted) and replaced whole
    whole, compiled = cached.read_bytes(), []
    monkeypatch.setattr(cuda_kernels, "_compile", lambda sm, kind: compiled.append(sm) or ptx.encode())
    for damage in (lambda data: data[:100], lambda data: data[:50] + b"x" + data[51:], lambda data: b""):
        cached.write_bytes(damage(whole))
        assert cuda_kernels.compile_ptx(arch).decode() == ptx and cached.read_bytes() == whole
    assert len(compiled) == 3

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    cached.unlink()
    monkeypatch.setattr(cuda_kernels.os, "replace", full_disk)
    assert cuda_kernels.compile_ptx(arch).decode() == ptx  # a cache that cannot be written costs nothing
    assert list(tmp_path.iterdir()) == []  # nor leaves a partial file behind, one more per attempt


def _elf_sections(binary: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file (what NVRTC's CUBIN is)."""
    (section_offset,) = struct.unpack_from("<Q", binary, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", binary, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", binary, section_offset + i * entry_size) for i in range(count)]
    names_offset = headers[names_index][4]

    def name(offset: int) -> str:
        start = names_offset + offset
        return binary[start:binary.index(b"\0", start)].decode()

    return {name(header[0]): binary[header[4]:header[4] + header[5]] for header in headers}


EIATTR_FRAME_SIZE, EIATTR_REGCOUNT = 0x11, 0x2F  # per-function attributes in a CUBIN's .nv.info


def _function_attributes(nv_info: bytes, attribute: int) -> list[int]:
    """The values of one per-function attribute (4-byte symbol index, 4-byte value) in .nv.info."""
    values, at = [], 0
    while at < len(nv_info):
        kind, code = nv_info[at], nv_info[at + 1]
        (size,) = struct.unpack_from("<H", nv_info, at + 2)
        if kind == 0x04:  # EIFMT_SVAL: a payload of `size` bytes follows
            if code == attribute:
                values.append(struct.unpack_from("<I", nv_info, at + 8)[0])
            at += 4 + size
        else:  # the value sits in the 2-byte field itself
            at += 4
    return values


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvrtc_compiles_every_kernel_to_cubin_within_its_register_budget(arch, kernel_cache, monkeypatch):
    """The CUBIN is what a GPU of that architecture loads (no JIT): ptxas must assemble every kernel
    for it in at most 64 registers a thread, so the four 256-thread blocks per SM that the
    preprocessing kernels' launch bounds ask for fit, which measured faster on an H100 than 72
    registers and three blocks (benchmarks/gpu_preprocess_tuning.md). Stack frames stay within 56
    bytes, what the kernels timed on an H100 have: the per-pixel kernels spill up to 40 bytes (a
    pair's second cell; 80 registers without spilling but three blocks per SM measured slower), the
    row kernels up to 56 in their plan, staging and image-edge paths. A larger frame means more of
    the state went to memory than in any timed build."""
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))
    cubin = cuda_kernels.compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF" and struct.unpack_from("<H", cubin, 18)[0] == 190  # EM_CUDA
    (flags,) = struct.unpack_from("<I", cubin, 0x30)
    assert (flags >> 8) & 0xFF == int(arch[3:])  # the SM the code was assembled for
    sections = _elf_sections(cubin)
    for name in cuda_kernels.KERNEL_NAMES:
        assert sections.get(f".text.{name}"), sorted(sections)
    frames = _function_attributes(sections[".nv.info"], EIATTR_FRAME_SIZE)
    registers = _function_attributes(sections[".nv.info"], EIATTR_REGCOUNT)
    assert len(registers) >= len(cuda_kernels.KERNEL_NAMES) and frames
    assert max(frames) <= 56, frames
    assert max(registers) <= 64, registers
    assert len(list(kernel_cache.glob(f"cubin-{arch}-*.cubin"))) == 1
    assert cuda_kernels.compile_cubin(arch) == cubin


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(cuda_kernels.KernelBuildError, match="sm_XY"):
        cuda_kernels.compile_ptx("hopper")


def test_job_layout_matches_the_compiled_struct(host):
    layout = np.zeros(16, np.int64)
    host.host_job_layout(layout)
    dtype = cuda_kernels.JOB_DTYPE
    assert layout[0] == dtype.itemsize
    assert list(layout[1:]) == [dtype.fields[name][1] for name in dtype.names]


def test_resizes_equal_opencv_on_random_sizes(host):
    """INTER_AREA (224 and 256) bit-exact; INTER_CUBIC bit-exact with OpenCV's own code path.

    On x86 the default cv2 routes uint8 INTER_CUBIC through Intel IPP, whose arithmetic is not
    public; against it the kernels are within one grey level (measured ~4% of values).
    """
    rng = np.random.default_rng(7)
    ipp_off_by_one = ipp_total = 0
    for h, w in SIZES:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for size in (224, 256):
            expected = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(host_resize(host, img, size, cv2.INTER_AREA), expected,
                                          err_msg=f"INTER_AREA {h}x{w} -> {size}")
        if h * w > 1_000_000:
            continue  # cubic reads 16 pixels per output: large sources add nothing new
        ours = host_resize(host, img, 224, cv2.INTER_CUBIC)
        optimized = cv2.useOptimized()
        try:
            cv2.setUseOptimized(False)
            plain = cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC)
            # a row of 3 * 259 values ends with OpenCV's non-SIMD fixed-point tail
            np.testing.assert_array_equal(
                host_resize(host, img, (259, 253), cv2.INTER_CUBIC),
                cv2.resize(img, (259, 253), interpolation=cv2.INTER_CUBIC), err_msg=f"{h}x{w}")
        finally:
            cv2.setUseOptimized(optimized)
        np.testing.assert_array_equal(ours, plain, err_msg=f"INTER_CUBIC {h}x{w}")
        default = cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC)
        difference = np.abs(ours.astype(int) - default)
        assert difference.max() <= 1
        ipp_off_by_one += int((difference > 0).sum())
        ipp_total += difference.size
    assert ipp_off_by_one / ipp_total < 0.06


def _reference_face(img: np.ndarray, box) -> np.ndarray:
    """The reference's crop_face_with_margin, literally: copyMakeBorder, slice, INTER_AREA 256."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2, y1 + h / 2
    side = max(w, h) * 1.3
    nx1, ny1, nx2, ny2 = int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)
    img_h, img_w = img.shape[:2]
    top, bottom = max(0, -ny1), max(0, ny2 - img_h)
    left, right = max(0, -nx1), max(0, nx2 - img_w)
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[0, 0, 0])
        nx1, nx2, ny1, ny2 = nx1 + left, nx2 + left, ny1 + top, ny2 + top
    return cv2.resize(img[ny1:ny2, nx1:nx2], (256, 256), interpolation=cv2.INTER_AREA)


def _random_box(rng, h: int, w: int) -> tuple[float, float, float, float]:
    bw, bh = rng.integers(max(1, w // 4), w + 1), rng.integers(max(1, h // 4), h + 1)
    x1, y1 = rng.integers(-bw // 4, w - bw // 2 + 1), rng.integers(-bh // 4, h - bh // 2 + 1)
    return float(x1), float(y1), float(x1 + bw), float(y1 + bh)


@pytest.mark.parametrize("h,w", [(252, 252), (253, 300), (300, 224), (1000, 700), (700, 1000),
                                 (224, 180), (120, 400), (90, 60), (1, 1), (640, 480)])
def test_streams_equal_reference_preprocessing(host, h, w):
    rng = np.random.default_rng(h * 10007 + w)
    padded = rng.integers(0, 256, (h, w + 5, 3), dtype=np.uint8)
    rgb = padded[:, :w]  # a row pitch larger than 3 * width
    box = _random_box(rng, h, w)

    global_ref, _ = preprocess.center_crop(np.ascontiguousarray(rgb), 252)
    if h >= 252 and w >= 252:
        top, left = (h - 252) // 2, (w - 252) // 2
        np.testing.assert_array_equal(global_ref, rgb[top:top + 252, left:left + 252])
    fusion_ref, _ = preprocess.resize_fusion(np.ascontiguousarray(rgb))
    face_ref = _reference_face(np.ascontiguousarray(rgb), box)
    np.testing.assert_array_equal(preprocess.crop_face(np.ascontiguousarray(rgb), box), face_ref)
    face_ref = face_ref[2:254, 2:254]
    no_face_ref = global_ref  # no usable face: the reference feeds the original image

    for stream, box_arg, expected in ((0, None, global_ref), (1, box, face_ref),
                                      (1, None, no_face_ref), (2, None, fusion_ref)):
        got = host_stream(host, rgb, stream, box_arg)
        fusion_cubic = h < 224 or (h == 224 and w < 224)
        if (stream == 2 and fusion_cubic) or (stream != 2 and min(h, w) < 252 and box_arg is None):
            # INTER_CUBIC inside: bit-exact with OpenCV's own path, within one level of IPP's
            optimized = cv2.useOptimized()
            try:
                cv2.setUseOptimized(False)
                plain = (preprocess.resize_fusion(np.ascontiguousarray(rgb))[0] if stream == 2
                         else preprocess.center_crop(np.ascontiguousarray(rgb), 252)[0])
            finally:
                cv2.setUseOptimized(optimized)
            np.testing.assert_array_equal(got, plain)
            assert np.abs(got.astype(int) - expected).max() <= 1
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"stream {stream}")
        normalised = host_stream(host, rgb, stream, box_arg, normalised=True)
        np.testing.assert_array_equal(normalised, preprocess.normalise(got))
        reference = ((got.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_array_equal(normalised, reference)


def _run_fused(host, jobs: np.ndarray, half: bool = False) -> list[np.ndarray]:
    """The fused kernel's task loop on the host: global, face, fusion [N,3,side,side]."""
    dtype = np.float16 if half else np.float32
    outs = [np.full((len(jobs), 3, side, side), np.nan, dtype) for side in (252, 252, 224)]
    host.host_preprocess(jobs.ctypes.data, len(jobs), int(half), *[o.ctypes.data for o in outs])
    return outs


def test_fused_kernel_writes_every_stream_of_a_batch(host):
    """The kernel's work decomposition (preprocess_task) over a batch packed by make_jobs: each
    image's three tensors equal runtime/preprocess.py, whichever face input the job names."""
    rng = np.random.default_rng(17)
    images = [rng.integers(0, 256, (h, w + 3, 3), dtype=np.uint8)[:, :w] for h, w in
              ((300, 400), (600, 260), (260, 300), (700, 500), (330, 280))]
    own_face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # e.g. a re-encoded crop
    small_face = rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)  # a user's face file
    # the last window leaves the image on the left and at the bottom: black rows and columns
    boxes = [(60.0, 50.0, 200.0, 230.0), None, (10.5, 20.25, 120.0, 140.0), None, (-30.0, 190.0, 160.0, 345.0)]
    faces = [None, None, own_face, small_face, None]
    jobs = cuda_kernels.make_jobs([_image_args(img) for img in images], boxes,
                                  face_images=[None if f is None else _image_args(f) for f in faces])
    outs = _run_fused(host, jobs)
    for i, img in enumerate(images):
        rgb = np.ascontiguousarray(img)
        if faces[i] is not None:
            face_rgb = faces[i]
        else:
            face_rgb = preprocess.crop_face(rgb, boxes[i]) if boxes[i] else rgb
        cubic = min(face_rgb.shape[:2]) < 252  # the 150-wide face file is upscaled (IPP caveat)
        optimized = cv2.useOptimized()
        try:
            cv2.setUseOptimized(not cubic)
            expected = (preprocess.preprocess_global(rgb).tensor, preprocess.preprocess_face(face_rgb).tensor,
                        preprocess.preprocess_fusion(rgb).tensor)
        finally:
            cv2.setUseOptimized(optimized)
        for name, got, want in zip(("global", "face", "fusion"), outs, expected):
            np.testing.assert_array_equal(got[i], want, err_msg=f"image {i} {name}")
    halves = _run_fused(host, jobs, half=True)
    for got, full in zip(halves, outs):
        np.testing.assert_array_equal(got, full.astype(np.float16))


def _run_blocks(host, decomposition: str, jobs: np.ndarray, half: bool = False, order=None) -> list[np.ndarray]:
    """The row or column kernel's blocks on the host (host_preprocess_rows / _columns), each
    block's threads in `order` (default ascending) on each side of its barriers."""
    dtype = np.float16 if half else np.float32
    outs = [np.full((len(jobs), 3, side, side), np.nan, dtype) for side in (252, 252, 224)]
    threads = host.host_row_threads()  # kRowThreads, which kColumnThreads equals
    order = np.arange(threads, dtype=np.int32) if order is None else np.ascontiguousarray(order, np.int32)
    assert sorted(order) == list(range(threads))
    kernel = getattr(host, f"host_preprocess_{decomposition}")
    kernel(jobs.ctypes.data, len(jobs), int(half), *[o.ctypes.data for o in outs], order.ctypes.data)
    return outs


def _at_address_phase(img: np.ndarray, phase: int, pitch: int) -> np.ndarray:
    """`img` copied to a view whose first byte sits `phase` bytes past a 16-byte boundary, rows
    `pitch` bytes apart: the row kernel's copies must handle every alignment of a row."""
    h, w = img.shape[:2]
    storage = np.zeros(h * pitch + 64, np.uint8)
    start = (-storage.ctypes.data) % 16 + phase
    view = np.ndarray((h, w, 3), np.uint8, buffer=storage, offset=start, strides=(pitch, 3, 1))
    view[...] = img
    return view


# (h, w, face box or None, face image shape or None): every path a row block can take. Staged:
# fusion of photos over 224 high (fractional cells, scale near 1 too), face windows inside or
# leaving the image on each side, 5000-px rows (one to a chunk, double-buffered). Per pixel: a row
# too wide to double-buffer (over 6139 px), integer scales, identity, upscales (INTER_CUBIC and
# INTER_AREA's bilinear emulation), a face image of its own, no face, 1x1.
ROW_CASES = [
    (1080, 1440, (500.0, 300.0, 900.0, 800.0), None),
    (700, 1000, (-80.5, -60.0, 300.0, 250.0), None),     # window leaves the top-left
    (700, 1000, (800.0, 500.0, 1090.0, 760.0), None),    # ... and the bottom-right
    (300, 5000, (2000.0, 10.0, 2300.0, 290.0), None),    # fusion rows in chunks of one
    (240, 6200, (3000.0, 20.0, 3200.0, 220.0), None),    # fusion row > 6139 pixels: per pixel
    (230, 229, (3.0, 4.0, 226.0, 225.0), None),          # scales just over 1: head and tail cells
    (224, 1000, None, None),                             # vertical scale exactly 1
    (448, 448, (100.0, 100.0, 300.0, 300.0), None),      # 2x2 area fast; a 260-px window staged
    (224, 224, (50.0, 50.0, 150.0, 150.0), None),        # identity; a 130-px window upscaled to 256
    (100, 300, (10.0, 10.0, 90.0, 90.0), None),          # INTER_CUBIC
    (600, 500, None, (256, 256)),                        # a face image of its own
    (1, 1, None, None),
]


def _block_cases(rng, cases) -> tuple[list, list, list]:
    """Random images, face boxes and face images of `cases`, image i at address phase 5i mod 16
    with rows padded by i mod 7 bytes: the block kernels must handle every alignment of a row."""
    images, boxes, faces = [], [], []
    for i, (h, w, box, face) in enumerate(cases):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images.append(_at_address_phase(img, phase=(5 * i) % 16, pitch=3 * w + i % 7))
        boxes.append(box)
        faces.append(None if face is None else rng.integers(0, 256, (*face, 3), dtype=np.uint8))
    return images, boxes, faces


def _assert_blocks_match_pixels(host, decomposition: str, jobs: np.ndarray, rng, label: str) -> None:
    """The row or column kernel writes the per-pixel kernel's bits, in fp32 and fp16, with its
    threads in ascending and in a random order."""
    for half in (False, True):
        pixels = _run_fused(host, jobs, half)
        for thread_order in (None, rng.permutation(host.host_row_threads())):
            blocks = _run_blocks(host, decomposition, jobs, half, thread_order)
            for name, got, want in zip(("global", "face", "fusion"), blocks, pixels):
                np.testing.assert_array_equal(got, want, err_msg=f"{label} half={half} {name}")


def _assert_bgr_reference(outs: list[np.ndarray], images: list, boxes: list, indices) -> None:
    """Images `indices` of a BGR batch's outputs equal runtime/preprocess.py itself."""
    for i in indices:
        rgb = np.ascontiguousarray(images[i][:, :, ::-1])
        expected = (preprocess.preprocess_global(rgb).tensor,
                    preprocess.preprocess_face(preprocess.crop_face(rgb, boxes[i])).tensor,
                    preprocess.preprocess_fusion(rgb).tensor)
        for got, want in zip(outs, expected):
            np.testing.assert_array_equal(got[i], want)


def test_row_decomposition_writes_what_the_pixel_decomposition_writes(host):
    """dfd_preprocess_rows (one block per output row, source rows staged in shared memory) against
    dfd_preprocess (one thread per pixel, itself checked against OpenCV above): the same bits in
    fp32 and fp16 for every path, at 12 row alignments, in two thread orders, and the reference for
    two images."""
    rng = np.random.default_rng(29)
    images, boxes, faces = _block_cases(rng, ROW_CASES)
    for order in ("RGB", "BGR"):
        jobs = cuda_kernels.make_jobs([_image_args(img) for img in images], boxes,
                                      face_images=[None if f is None else _image_args(f) for f in faces],
                                      channel_order=order)
        staged = np.zeros(len(jobs) * cuda_kernels.ROWS_PER_IMAGE, np.int32)
        host.host_row_staged(jobs.ctypes.data, len(jobs), staged.ctypes.data)
        staged = staged.reshape(len(jobs), -1)
        # rows per image of (global, face, fusion) that take the staged schedule: the comparison
        # below covers both schedules only if these are what the cases were chosen for
        assert [(int(r[:252].sum()), int(r[252:504].sum()), int(r[504:].sum())) for r in staged] == [
            (0, 252, 224), (0, 252, 224), (0, 252, 224), (0, 252, 224), (0, 252, 0), (0, 252, 224), (0, 0, 224),
            (0, 252, 0), (0, 0, 0), (0, 0, 0), (0, 0, 224), (0, 0, 0)]
        _assert_blocks_match_pixels(host, "rows", jobs, rng, order)
    # the last jobs were BGR; staged fusion and face, the window leaving the image: the reference
    _assert_bgr_reference(_run_blocks(host, "rows", jobs), images, boxes, (0, 1))


def test_column_decomposition_writes_what_the_pixel_decomposition_writes(host):
    """dfd_preprocess_columns (a block per kColumnRows output rows, each thread walking a column
    down them and carrying the source row two cells share) against dfd_preprocess (itself checked
    against OpenCV above): the same bits in fp32 and fp16 for every path of ROW_CASES, the bar's
    photo and face box, a 97x3001 photo (upscaled rows), scales just over 1 and a window past the
    image's corner, at all 16 row alignments, in two thread orders; and the reference itself for
    three images."""
    assert host.host_column_blocks_per_image() == cuda_kernels.COLUMN_BLOCKS_PER_IMAGE
    rng = np.random.default_rng(31)
    cases = ROW_CASES + [(1080, 1440, (432.0, 216.0, 1008.0, 864.0), None),  # the bar's photo and box
                         (97, 3001, (5.0, 5.0, 90.0, 90.0), None),  # fusion: upscaled rows, area columns
                         (257, 300, (0.0, 0.0, 300.0, 257.0), None),  # cells of one row and a tail
                         (1000, 1339, (-5.0, 700.0, 400.0, 1003.0), None)]  # window past the corner
    images, boxes, faces = _block_cases(rng, cases)
    for order in ("RGB", "BGR"):
        jobs = cuda_kernels.make_jobs([_image_args(img) for img in images], boxes,
                                      face_images=[None if f is None else _image_args(f) for f in faces],
                                      channel_order=order)
        _assert_blocks_match_pixels(host, "columns", jobs, rng, order)
    _assert_bgr_reference(_run_blocks(host, "columns", jobs), images, boxes, (0, 1, 12))


def test_face_image_of_its_own_needs_a_valid_geometry():
    with pytest.raises(ValueError, match="face image 0"):
        cuda_kernels.make_jobs([(1, 30, 10, 10)], [None], face_images=[(2, 10, 10, 10)])
    with pytest.raises(ValueError, match="2 face images"):
        cuda_kernels.make_jobs([(1, 30, 10, 10)], [None], face_images=[None, None])


def test_vote_kernel_equals_python_vote(host):
    rng = np.random.default_rng(19)
    n = 5000
    logits = [np.ascontiguousarray((rng.standard_normal((n, 2)) * 3).astype(np.float32)) for _ in range(3)]
    weights = np.array([2.0, 1.0, 2.0])
    probs, score, mean = np.empty((n, 3), np.float32), np.empty(n), np.empty(n)
    host.host_vote_kernel(*[v.ctypes.data for v in (*logits, weights)], n,
                          *[v.ctypes.data for v in (probs, score, mean)])
    expected = np.stack([vote.softmax_fake_probability(v) for v in logits], 1)
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_array_equal(score, vote.discretised_vote_batch(expected))
    for i in range(0, n, 250):
        assert mean[i] == vote.discretised_vote(dict(zip(vote.STREAMS, expected[i].tolist()))).raw_mean


def test_bgr_input_gives_the_rgb_result(host):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    box = (50.0, 40.0, 250.0, 260.0)
    for stream in (0, 1, 2):
        np.testing.assert_array_equal(host_stream(host, bgr, stream, box, order=1),
                                      host_stream(host, rgb, stream, box, order=0))


def test_half_conversion_matches_numpy(host):
    rng = np.random.default_rng(5)
    values = np.concatenate([
        rng.standard_normal(200_000).astype(np.float32) * 3,
        rng.standard_normal(20_000).astype(np.float32) * 1e-6,  # half subnormals
        np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, np.inf, -np.inf,
                  2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26, 1 + 2.0 ** -11,
                  1 + 3 * 2.0 ** -11], dtype=np.float32),
    ])
    bits = np.empty(values.size, np.uint16)
    host.host_float_to_half(values, values.size, bits)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(bits, expected)


def _string_vote(probs: np.ndarray, weights=(2.0, 1.0, 2.0)) -> np.ndarray:
    """The reference vote with its own strings: f"{p:.1f}", np.average, np.round."""
    out = np.empty(len(probs))
    for i, row in enumerate(probs):
        rounded = [float(f"{float(p):.1f}") for p in row]
        out[i] = float(f"{float(np.round(np.average(rounded, weights=weights), 1)):.1f}")
    return out


def _boundary_probabilities() -> np.ndarray:
    """Every exact rounding boundary k/20 in [0, 1] and its float32 neighbours, all combinations."""
    centres = np.array([k / 20 for k in range(21)], dtype=np.float32)
    values = np.unique(np.concatenate([centres, np.nextafter(centres, np.float32(0)),
                                       np.nextafter(centres, np.float32(1))]))
    values = values[(values >= 0) & (values <= 1)]
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    return grid.astype(np.float32)


def test_vote_equals_python_vote(host):
    rng = np.random.default_rng(11)
    probs = np.concatenate([rng.random((100_000, 3), dtype=np.float32), _boundary_probabilities()])
    weights = np.array([2.0, 1.0, 2.0])
    score, mean = np.empty(len(probs)), np.empty(len(probs))
    host.host_vote(probs, len(probs), weights, score, mean)

    np.testing.assert_array_equal(score, vote.discretised_vote_batch(probs))
    strings = rng.choice(len(probs) - 100_000, 3000, replace=False) + 100_000
    check = np.concatenate([np.arange(3000), strings])
    np.testing.assert_array_equal(score[check], _string_vote(probs[check]))
    for i in check[::100]:
        single = vote.discretised_vote(dict(zip(vote.STREAMS, probs[i].tolist())))
        assert single.score == score[i]
        assert single.raw_mean == mean[i]


def test_softmax_equals_python(host):
    rng = np.random.default_rng(13)
    logits = np.concatenate([rng.standard_normal((50_000, 2)) * 4,
                             [[0, 0], [100, -100], [-100, 100], [1e30, -1e30]]]).astype(np.float32)
    ours = np.empty(len(logits), np.float32)
    host.host_softmax(logits, len(logits), ours)
    np.testing.assert_array_equal(ours, vote.softmax_fake_probability(logits))

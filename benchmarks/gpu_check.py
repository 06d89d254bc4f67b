"""GPU check for a lent GPU machine: kernel parity, fused-preprocessing throughput, PyTorch baseline.

Run on a machine with an NVIDIA GPU (device memory and timing through PyTorch, kernels through
dfd.runtime.cuda_kernels):

    python benchmarks/gpu_check.py --out benchmarks/gpu_check_<gpu>.json

1. Preprocessing parity: random image sizes (1x1 .. 4000x3000, pitched rows at every alignment, RGB
   and BGR) through the fused kernel, in every decomposition (one thread per pixel pair, one block
   per row, one block per group of rows walked column by column), vs runtime/preprocess.py
   (OpenCV). INTER_AREA paths and crops must be bit-exact; INTER_CUBIC is bit-exact with OpenCV's
   own code and within one grey level of x86 OpenCV's IPP; every decomposition must write the
   per-pixel one's bits.
2. Throughput of the fused kernel, every decomposition interleaved, vs the measured
   device-to-device copy bandwidth, both counted as bytes read + bytes written, each byte once
   (fused_bytes). The acceptance bar is >= 50% of the copy bandwidth, on a batch of 32 1080x1440
   photos; 8 12-MP photos and 64 VGA images are reported beside it.
3. Vote kernel parity vs runtime/vote.py on 100,000 random logit triples (every rounding boundary
   is checked on the host build of the same code, tests/runtime/test_cuda_kernels.py).
4. PyTorch fp16 latency of the three streams at the paper's sizes with random weights (DINOv2-giant/14
   at 252 via timm, DINOv2-giant + CLIP ViT-L/14 at 224 via open_clip): the bar engines must beat.
5. The fused pipeline (runtime/gpu_pipeline.py) on the real driver API (runtime/cuda_device.py):
   staging, job table, the preprocessing launch into engine buffers, per-engine streams ordered by
   events, the vote launch, the result copy, and CUDA-graph capture and replay. TensorRT is not on
   the lent machines, so the engines are stand-ins: an NVRTC kernel on each engine's own stream
   (logits = mean of the first two input channels), fp32 and fp16, checked against the same head
   on runtime/preprocess.py's tensors.

Each section's result, or its traceback, lands in the report, and the others still run; the exit
status is 1 if any section raised or failed its check. ``--only`` picks sections (e.g. under
compute-sanitizer). Results of a run on an H100: benchmarks/gpu_check_h100.json and
benchmarks/gpu_preprocess_tuning.md.

``--dry-run`` runs only what needs no GPU (NVRTC compilation for sm_87/sm_90, job packing, the NumPy
references), so the script is checked on CPU-only machines too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import cv2
import numpy as np

from dfd.runtime import cuda_kernels, preprocess, vote
from dfd.runtime.cuda_kernels import CudaUnavailableError, KernelArgs, check_cuda
from dfd.runtime.gpu_pipeline import FusedInput, GpuPipeline

CROP, FUSION = 252, 224


def random_cases(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    fixed = [(1, 1), (90, 60), (224, 180), (224, 224), (448, 448), (4000, 3000), (3000, 4000)]
    return fixed + [(int(h), int(w)) for h, w in rng.integers(1, 1500, size=(count, 2))]


def reference_streams(rgb: np.ndarray, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 CHW global, face, fusion tensors from runtime/preprocess.py (OpenCV)."""
    glob = preprocess.preprocess_global(rgb).tensor
    face_img = preprocess.crop_face(rgb, box) if box is not None else rgb
    face = preprocess.preprocess_face(face_img).tensor
    fusion = preprocess.preprocess_fusion(rgb).tensor
    return glob, face, fusion


def random_box(rng, h: int, w: int):
    if min(h, w) < 8:
        return None
    bw, bh = int(rng.integers(w // 3, w + 1)), int(rng.integers(h // 3, h + 1))
    x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    return (float(x1), float(y1), float(x1 + bw), float(y1 + bh))


def check_compile() -> dict:
    return {arch: len(cuda_kernels.compile_ptx(arch)) for arch in ("sm_87", "sm_90")}


def dry_run(rng) -> dict:
    """The CPU-checkable parts: compilation, job packing, NumPy references."""
    result = {"ptx_bytes": check_compile()}
    cases = random_cases(rng, 5)
    jobs = cuda_kernels.make_jobs([(0, 3 * w, w, h) for h, w in cases],
                                  [random_box(rng, h, w) for h, w in cases])
    result["jobs"] = len(jobs)
    result["throughput_bytes"] = {}
    for b, h, w in THROUGHPUT_CASES:  # what the throughput section will count, per batch
        (read, fp32), (_, fp16) = fused_bytes(b, h, w, 4), fused_bytes(b, h, w, 2)
        result["throughput_bytes"][f"{b}x{h}x{w}"] = {"read": read, "written_fp32": fp32, "written_fp16": fp16}
    start = time.perf_counter()
    for h, w in cases[:4]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        shapes = [t.shape for t in reference_streams(rgb, random_box(rng, h, w))]
        assert shapes == [(3, CROP, CROP), (3, CROP, CROP), (3, FUSION, FUSION)], shapes
    result["reference_seconds"] = time.perf_counter() - start
    result["stand_in_ptx_bytes"] = len(cuda_kernels.nvrtc_compile(STAND_IN_SOURCE, "stand_in.cu", {}, 90, "ptx"))
    item = FusedInput(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8), (20.0, 30.0, 200.0, 250.0))
    result["stand_in_expected"] = [[float(p) for p in expected_mean_heads(item, half)] for half in (False, True)]
    return result


def device_jobs(torch, jobs: np.ndarray):
    """The job table on the GPU, as a tensor the caller keeps alive while kernels read it."""
    return torch.from_numpy(np.ascontiguousarray(jobs).view(np.uint8)).cuda()


def gpu_parity(torch, kernels, rng, cases) -> dict:
    """Every preprocessing decomposition against runtime/preprocess.py, and against the per-pixel one."""
    report: dict = {}
    for decomposition in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
        report[decomposition] = {"exact_streams": 0, "cubic_streams": 0, "max_abs_diff_exact": 0.0,
                                 "max_abs_diff_cubic": 0.0}
    others = [d for d in cuda_kernels.PREPROCESS_DECOMPOSITIONS if d != "pixels"]
    report["tensors_differing_from_pixels"] = dict.fromkeys(others, 0)
    for i, (h, w) in enumerate(cases):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        order = "BGR" if i % 2 else "RGB"
        host = rgb[:, :, ::-1] if order == "BGR" else rgb
        pitched = torch.zeros((h, 3 * w + 64), dtype=torch.uint8, device="cuda")
        phase = i % 16  # every alignment of a row's first byte
        pitched[:, phase:phase + 3 * w] = torch.from_numpy(np.ascontiguousarray(host).reshape(h, 3 * w)).cuda()
        view = pitched[:, phase:]
        box = random_box(rng, h, w)
        jobs = device_jobs(torch, cuda_kernels.make_jobs([(view.data_ptr(), view.stride(0), w, h)], [box], order))
        stream = torch.cuda.current_stream().cuda_stream
        references = reference_streams(rgb, box)
        written = {}
        for decomposition in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
            outs = [torch.full((1, 3, s, s), float("nan"), dtype=torch.float32, device="cuda")
                    for s in (CROP, CROP, FUSION)]
            kernels.preprocess(jobs.data_ptr(), 1, tuple(o.data_ptr() for o in outs), stream=stream,
                               decomposition=decomposition)
            torch.cuda.synchronize()
            written[decomposition] = [o[0].cpu().numpy() for o in outs]
            worst = report[decomposition]
            for name, got, ref in zip(("global", "face", "fusion"), written[decomposition], references):
                diff = float(np.abs(got - ref).max())
                diff = float("inf") if np.isnan(diff) else diff  # a pixel never written
                cubic = (name == "fusion" and (h < FUSION or (h == FUSION and w < FUSION))) or \
                    (name != "fusion" and min(h, w) < CROP and (name == "global" or box is None))
                key = "cubic" if cubic else "exact"
                worst[f"{key}_streams"] += 1
                worst[f"max_abs_diff_{key}"] = max(worst[f"max_abs_diff_{key}"], diff)
        for d in others:
            report["tensors_differing_from_pixels"][d] += sum(
                not np.array_equal(a, b) for a, b in zip(written[d], written["pixels"]))
    # one grey level after normalisation is 1 / (255 * 0.224) = 0.0175
    for decomposition in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
        worst = report[decomposition]
        worst["ok"] = worst["max_abs_diff_exact"] == 0.0 and worst["max_abs_diff_cubic"] <= 0.018
    report["ok"] = not any(report["tensors_differing_from_pixels"].values())
    return report


def timed(torch, fn, repeat: int = 20, groups: int = 5) -> float:
    """Seconds per call: the median over `groups` event-timed runs of `repeat` calls, after a warm-up
    (these machines are noisy; one long average hides a slow outlier group)."""
    fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(groups):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        means.append(start.elapsed_time(end) / 1000 / repeat)
    return float(np.median(means))


THROUGHPUT_CASES = ((32, 1080, 1440), (8, 3000, 4000), (64, 480, 640))  # (batch, height, width); first is the bar


def fused_bytes(batch: int, height: int, width: int, itemsize: int) -> tuple[int, int]:
    """(bytes read, bytes written) that fused preprocessing must move for a batch of height x width
    uint8 RGB images into tensors of ``itemsize``-byte values: each byte once, as the copy it is
    compared with reads and writes each byte once.

    The fusion stream's resize reads every pixel of the image, and what the other two streams read
    (the 252 crop, or the whole image where it is upscaled first; the face window's part inside
    the image) lies inside it, so the union of the three streams' reads is the whole image. Counting
    the crop and the face window again on top of it, as the records up to commit d3e73d9 did,
    credits the kernel with bytes it need not read: 1.39x at the bar case
    (benchmarks/gpu_preprocess_tuning.md, "Bytes counted once")."""
    read = batch * 3 * height * width
    written = batch * 3 * (2 * CROP * CROP + FUSION * FUSION) * itemsize
    return read, written


def copy_bandwidth(torch, copy_bytes: int, repeat: int) -> float:
    """Bytes read + written per second of a device-to-device copy of ``copy_bytes`` (the bar's
    reference; its buffers are freed on return, before the kernels' cases allocate theirs)."""
    src = torch.randint(0, 256, (copy_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * copy_bytes / timed(torch, lambda: dst.copy_(src), repeat)


def throughput_batch(torch, batch: int, h: int, w: int):
    """(images, job table) on the device for a throughput case: random uint8 photos, each with the
    face box (0.3w, 0.2h, 0.7w, 0.8h); the caller keeps both alive while kernels read them."""
    images = torch.randint(0, 256, (batch, h, 3 * w), dtype=torch.uint8, device="cuda")
    boxes = [(w * 0.3, h * 0.2, w * 0.7, h * 0.8)] * batch
    jobs = device_jobs(torch, cuda_kernels.make_jobs([(images[i].data_ptr(), 3 * w, w, h) for i in range(batch)],
                                                     boxes))
    return images, jobs


def gpu_throughput(torch, kernels, cases=THROUGHPUT_CASES, rounds: int = 2, repeat: int = 20,
                   copy_bytes: int = 1 << 28) -> dict:
    """Fused preprocessing vs a device-to-device copy, both as bytes read + bytes written per second.

    The kernel's bytes are the fewest it must move (fused_bytes): the image once and the three
    tensors once. Every decomposition is timed, interleaved over `rounds` rounds (each a median of
    event-timed groups), and the faster round counts; the rounds' spread says how far to trust a
    difference. The acceptance bar (>= 50% of the copy) is judged on the first case, a batch of
    1080x1440 photos, for the decomposition the runtime uses (cuda_kernels.DEFAULT_DECOMPOSITION)."""
    copy_bw = copy_bandwidth(torch, copy_bytes, repeat)
    results: dict = {"copy_bandwidth_GBps": copy_bw / 1e9, "runtime_uses": cuda_kernels.DEFAULT_DECOMPOSITION}
    for index, (batch, h, w) in enumerate(cases):
        images, jobs = throughput_batch(torch, batch, h, w)  # jobs point into images
        stream = torch.cuda.current_stream().cuda_stream
        case: dict = {"batch": batch, "height": h, "width": w}
        for half in (False, True):
            dtype = torch.float16 if half else torch.float32
            outs = [torch.empty((batch, 3, s, s), dtype=dtype, device="cuda") for s in (CROP, CROP, FUSION)]
            read, written = fused_bytes(batch, h, w, outs[0].element_size())
            case.setdefault("bytes_read_per_batch", read)
            case["fp16_bytes_written_per_batch" if half else "fp32_bytes_written_per_batch"] = written
            runs: dict = {d: [] for d in cuda_kernels.PREPROCESS_DECOMPOSITIONS}
            for _ in range(rounds):
                for decomposition, seconds in runs.items():
                    seconds.append(timed(torch, lambda: kernels.preprocess(
                        jobs.data_ptr(), batch, tuple(o.data_ptr() for o in outs), half=half, stream=stream,
                        decomposition=decomposition), repeat))
            for decomposition, seconds in runs.items():
                bw = (read + written) / min(seconds)
                case.setdefault(decomposition, {})["fp16" if half else "fp32"] = {
                    "seconds_per_batch": min(seconds), "rounds_seconds": seconds,
                    "images_per_second": batch / min(seconds), "bytes_read_plus_written_GBps": bw / 1e9,
                    "fraction_of_copy_bandwidth": bw / copy_bw}
        for decomposition in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
            part = case[decomposition]
            part["meets_bar"] = min(part[k]["fraction_of_copy_bandwidth"] for k in ("fp32", "fp16")) >= 0.5
        if index == 0:
            case["ok"] = case[cuda_kernels.DEFAULT_DECOMPOSITION]["meets_bar"]
        results[f"{batch}x{h}x{w}"] = case
    return results


def gpu_vote(torch, kernels, rng) -> dict:
    n = 100_000
    logits = [torch.from_numpy((rng.standard_normal((n, 2)) * 3).astype(np.float32)).cuda() for _ in range(3)]
    probs = torch.empty((n, 3), dtype=torch.float32, device="cuda")
    score = torch.empty(n, dtype=torch.float64, device="cuda")
    mean = torch.empty(n, dtype=torch.float64, device="cuda")
    weights = vote.DEFAULT_VOTE_WEIGHTS
    kernels.vote(tuple(t.data_ptr() for t in logits), tuple(weights[s] for s in vote.STREAMS), n,
                 probs.data_ptr(), score.data_ptr(), mean.data_ptr(),
                 stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    ref_probs = np.stack([vote.softmax_fake_probability(t.cpu().numpy()) for t in logits], 1)
    ref_score = vote.discretised_vote_batch(ref_probs)
    report = {"n": n, "prob_mismatches": int((probs.cpu().numpy() != ref_probs).sum()),
              "score_mismatches_given_own_probs": int(
                  (score.cpu().numpy() != vote.discretised_vote_batch(probs.cpu().numpy())).sum()),
              "score_mismatches_end_to_end": int((score.cpu().numpy() != ref_score).sum())}
    # the bar is the score; a probability may differ in its last bit where CUDA's and glibc's double
    # exp differ by an ulp (see runtime/kernels/vote.cuh), which the count above reports
    report["ok"] = report["score_mismatches_given_own_probs"] == 0 and report["score_mismatches_end_to_end"] == 0
    return report


# Stand-in engines: one block per (image, channel 0 or 1) averages that input plane. A kernel of our
# own on the engine's own stream, so the pipeline's CUDA graph can capture it (torch would allocate).
STAND_IN_SOURCE = rb"""
__device__ float half_bits_to_float(unsigned short h) {
    unsigned exponent = (h >> 10) & 31u, mantissa = h & 1023u;
    float value = exponent == 0 ? ldexpf((float)mantissa, -24)
                : exponent == 31 ? __int_as_float(0x7f800000 | (mantissa << 13))
                : ldexpf((float)(mantissa | 1024u), (int)exponent - 25);
    return (h & 0x8000u) ? -value : value;
}

template <typename T> __device__ float load(const T* p, size_t i);
template <> __device__ float load<float>(const float* p, size_t i) { return p[i]; }
template <> __device__ float load<unsigned short>(const unsigned short* p, size_t i) { return half_bits_to_float(p[i]); }

template <typename T> __device__ void mean_head(const T* input, float* logits, int side) {
    __shared__ double partial[256];
    const size_t plane = (size_t)side * side, base = ((size_t)blockIdx.x * 3 + blockIdx.y) * plane;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < plane; i += blockDim.x) sum += load(input, base + i);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) logits[blockIdx.x * 2 + blockIdx.y] = (float)(partial[0] / (double)plane);
}

extern "C" __global__ void mean_head_f32(const float* input, float* logits, int side) { mean_head(input, logits, side); }
extern "C" __global__ void mean_head_f16(const unsigned short* input, float* logits, int side) { mean_head(input, logits, side); }
"""
STAND_IN_BLOCK = 256


class MeanHeadEngine:
    """A stand-in engine: logits = per-image means of input channels 0 and 1, computed by an NVRTC
    kernel on a stream of its own, on device buffers from the pipeline's device."""

    def __init__(self, device, module, side: int, max_batch: int, half: bool) -> None:
        self._device, self.side, self.max_batch = device, side, max_batch
        self.input_dtype = np.dtype(np.float16 if half else np.float32)
        self.output_dtype = np.dtype(np.float32)
        self.input_address = device.alloc(max_batch * 3 * side * side * self.input_dtype.itemsize)
        self.output_address = device.alloc(max_batch * 2 * 4)
        self.stream = device.new_stream()
        self.lock = threading.Lock()
        name = b"mean_head_f16" if half else b"mean_head_f32"
        self._function = check_cuda(device.kernels.driver.cuModuleGetFunction(module, name), "cuModuleGetFunction",
                                    CudaUnavailableError)

    def enqueue(self, batch: int) -> None:
        args = KernelArgs(ctypes.c_void_p(self.input_address), ctypes.c_void_p(self.output_address),
                          ctypes.c_int(self.side))
        check_cuda(self._device.kernels.driver.cuLaunchKernel(self._function, batch, 2, 1, STAND_IN_BLOCK, 1, 1, 0,
                                                              self.stream, args.address, 0),
                   "cuLaunchKernel", CudaUnavailableError)

    def close(self) -> None:
        self._device.free(self.input_address)
        self._device.free(self.output_address)


def expected_mean_heads(item: FusedInput, half: bool) -> list[float]:
    """What the stand-in engines and the vote make of one image, from runtime/preprocess.py."""
    glob, face, fusion = reference_streams(item.rgb, item.face_box)
    if item.face_rgb is not None:
        face = preprocess.preprocess_face(item.face_rgb).tensor
    cast = (lambda t: t.astype(np.float16)) if half else (lambda t: t)
    return [vote.softmax_fake_probability(cast(t)[:2].astype(np.float64).mean(axis=(1, 2))[None])[0]
            for t in (glob, face, fusion)]


def gpu_pipeline(kernels, rng, count: int = 24, max_batch: int = 8, repeat: int = 20) -> dict:
    """The fused pipeline on the driver API, fp32 and fp16 engines, CUDA graph of batch max_batch.

    Runs: 24 images (chunks 8, 8, 8: plain, capture, replay), the same reversed (replays with
    other images at the same addresses' job table), 5 images (plain, not the graph's size); every
    result against the NumPy reference. Then the time per batch of max_batch with and without
    the graph (the stand-in engines are trivial, so this is the pipeline's own overhead)."""
    from dfd.runtime.cuda_device import CudaPipelineDevice

    device = CudaPipelineDevice(kernels)
    sm = int(kernels.info.arch.removeprefix("sm_"))
    cubin = cuda_kernels.nvrtc_compile(STAND_IN_SOURCE, "stand_in.cu", {}, sm, "cubin")
    module = check_cuda(kernels.driver.cuModuleLoadData(cubin), "cuModuleLoadData", CudaUnavailableError)
    items = []
    for i, (h, w) in enumerate(random_cases(rng, count)[:count]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        box = random_box(rng, h, w) if i % 3 == 0 else None
        own = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) if i % 3 == 1 else None
        items.append(FusedInput(rgb, box, own))
    report = {"images": count, "max_batch": max_batch, "cuda_graph_batch": max_batch}
    for half in (False, True):
        engines = {name: MeanHeadEngine(device, module, side, max_batch, half)
                   for name, side in (("global", CROP), ("face", CROP), ("fusion", FUSION))}
        pipeline = GpuPipeline(device, engines, vote.DEFAULT_VOTE_WEIGHTS, capture_batch=max_batch)
        worst, mismatches = 0.0, 0
        for batch in (items, items[::-1], items[:5]):
            result = pipeline.run(batch)
            expected = np.array([expected_mean_heads(item, half) for item in batch], np.float32)
            worst = max(worst, float(np.abs(result.probabilities - expected).max()))
            mismatches += int((result.score != vote.discretised_vote_batch(result.probabilities)).sum())
        seconds = {}
        for label, batch in (("graph", items[:max_batch]), ("plain", items[:max_batch - 1])):
            pipeline.run(batch)
            start = time.perf_counter()
            for _ in range(repeat):
                pipeline.run(batch)
            seconds[label] = (time.perf_counter() - start) / repeat
        pipeline.close()
        for engine in engines.values():
            engine.close()
        report["fp16" if half else "fp32"] = {
            "max_abs_diff_probability": worst, "vote_mismatches_given_own_probs": mismatches,
            f"ms_per_batch_of_{max_batch}_graph": 1000 * seconds["graph"],
            f"ms_per_batch_of_{max_batch - 1}_plain": 1000 * seconds["plain"],
            "ok": worst < 1e-3 and mismatches == 0}
    device.close()
    check_cuda(kernels.driver.cuModuleUnload(module), "cuModuleUnload", CudaUnavailableError)
    return report


def torch_baseline(torch, batch_sizes=(1, 8)) -> dict:
    import open_clip
    import timm

    results = {"torch": torch.__version__, "timm": timm.__version__, "open_clip": open_clip.__version__}
    with torch.device("cuda"):  # random initialisation on the GPU: seconds, not minutes of CPU
        dino252 = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=252,
                                    num_classes=2).half().eval()
        dino224 = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=224,
                                    num_classes=0).half().eval()
        # open_clip builds some parameters on the CPU whatever the default device: move them too
        clip = open_clip.create_model("ViT-L-14", pretrained=None).visual.cuda().half().eval()
    with torch.inference_mode():
        for n in batch_sizes:
            x252 = torch.randn(n, 3, 252, 252, device="cuda", dtype=torch.float16)
            x224 = torch.randn(n, 3, 224, 224, device="cuda", dtype=torch.float16)
            results[f"batch{n}"] = {
                "global_or_face_ms": 1000 * timed(torch, lambda: dino252(x252), 10),
                "fusion_ms": 1000 * timed(torch, lambda: (dino224(x224), clip(x224)), 10),
            }
    return results


SECTIONS = ("compile", "parity", "throughput", "vote", "pipeline", "torch_fp16_baseline")


def run_section(name: str, section) -> dict:
    """One section's report, or its traceback: a loan is short, so one broken section must not
    cost the others' results."""
    start = time.perf_counter()
    try:
        part = section()
    except Exception:  # noqa: BLE001 - recorded in the report and in the exit status
        part = {"error": traceback.format_exc()}
        print(f"gpu_check: section {name} raised:\n{part['error']}", file=sys.stderr)
    part["section_seconds"] = time.perf_counter() - start
    return part


def section_passed(part: dict) -> bool:
    """False when a section raised or any of its checks (an ``ok`` key at any depth) failed."""
    if "error" in part or part.get("ok") is False:
        return False
    return all(section_passed(v) for v in part.values() if isinstance(v, dict))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="only the parts that need no GPU")
    parser.add_argument("--cases", type=int, default=50, help="random image sizes for parity")
    parser.add_argument("--skip-baseline", action="store_true", help="no PyTorch stream latency")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections (of {', '.join(SECTIONS)}), e.g. under compute-sanitizer")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2026)
    report: dict = {"python": platform.python_version(), "opencv": cv2.__version__,
                    "nvrtc": cuda_kernels.nvrtc_version()}
    if args.dry_run:
        report["dry_run"] = dry_run(rng)
    else:
        import torch

        kernels = cuda_kernels.CudaKernels(0)
        report["gpu"] = {"name": kernels.info.name, "arch": kernels.info.arch}
        sections = {
            "compile": check_compile,
            "parity": lambda: gpu_parity(torch, kernels, rng, random_cases(rng, args.cases)),
            "throughput": lambda: gpu_throughput(torch, kernels),
            "vote": lambda: gpu_vote(torch, kernels, rng),
            "pipeline": lambda: gpu_pipeline(kernels, rng),
        }
        if not args.skip_baseline:
            sections["torch_fp16_baseline"] = lambda: torch_baseline(torch)
        for name, section in sections.items():
            if args.only is None or name in args.only:
                report[name] = run_section(name, section)
        kernels.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    failed = [name for name, part in report.items() if isinstance(part, dict) and not section_passed(part)]
    if failed:
        print(f"gpu_check: FAILED sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

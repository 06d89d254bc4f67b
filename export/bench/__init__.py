"""``dfd-export bench``: how fast an engine set scores images, per stage, next to the reference.

Users pick this tool because it is faster than running the reference code, so the benchmark
measures both in one process, on the same images, and reports the ratio:

* **runtime**: ``Detector.detect`` end to end (what a user calls), plus a staged run that calls
  the same runtime functions one stage at a time (decode, face localisation, preprocessing,
  each stream on the backend, vote) so the time can be attributed;
* **torch** (``--compare torch``): the reference-style PyTorch eager pipeline: ``cv2.imread``,
  the reference's OpenCV crop/resize, torchvision-style ``ToTensor``+``Normalize`` in torch,
  the fp32 stream modules one after another under ``torch.no_grad`` with torch's default
  threads, and the reference's text-rounded vote. The weights are the engine set's own: the
  checkpoints its manifest records, or the same seeded random initialisation.

Iterations of the two pipelines alternate (when memory allows both to be resident), so load
from other processes on a shared machine hits both alike and the ratio stays meaningful.
Everything is recorded in one JSON document: percentiles, per-stage times, analytic FLOPs (to
read a result as a fraction of a device's peak), peak memory and the environment.

The package: ``flops`` (analytic FLOPs from the manifest's architecture), ``environment`` (machine,
versions, memory), ``pipelines`` (the runtime and the reference-style PyTorch pipeline, timed per
stage), ``measure`` (the interleaved measurement and the result document), ``plot`` and ``cli``.
"""

from dfd.runtime.errors import DfdError


class BenchError(DfdError, ValueError):
    """The benchmark cannot run as asked; the message says what to change."""

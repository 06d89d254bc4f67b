// Fused preprocessing: one launch writes the global, face and fusion tensors of a whole batch.
//
// Thread t runs task t of dfd::preprocess_task (one output pixel of one stream of one image). The
// per-pixel math and the work decomposition are in preprocess.cuh, which the test suite also
// compiles for the host.
#include "preprocess.cuh"

namespace {

template <typename Store>
__device__ __forceinline__ void run_task(const dfd::Job* jobs, int batch, Store store) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)batch * dfd::kTasksPerImage) return;
    dfd::preprocess_task(jobs, t, store);
}

}  // namespace

// Launch bounds: 256-thread blocks (cuda_kernels.CudaKernels.BLOCK), at least 4 resident per SM, so
// ptxas holds the kernels to 64 registers (72 unbounded: 3 blocks). On an H100 that took a batch of
// 32 1080x1440 photos from 300 to 260 us, at the price of an 8-byte spill outside the pixel loops
// (benchmarks/gpu_preprocess_tuning.md).
#define DFD_PREPROCESS_BOUNDS __launch_bounds__(256, 4)

// Outputs: global and face [N,3,252,252], fusion [N,3,224,224], float32.
extern "C" __global__ void DFD_PREPROCESS_BOUNDS
dfd_preprocess_f32(const dfd::Job* jobs, int batch, float* global, float* face, float* fusion) {
    run_task(jobs, batch, [&](int stream, long long i, float v) {
        (stream == dfd::kGlobal ? global : stream == dfd::kFace ? face : fusion)[i] = v;
    });
}

// Same outputs in IEEE half precision (bits), rounded to nearest even.
extern "C" __global__ void DFD_PREPROCESS_BOUNDS
dfd_preprocess_f16(const dfd::Job* jobs, int batch, unsigned short* global, unsigned short* face,
                   unsigned short* fusion) {
    run_task(jobs, batch, [&](int stream, long long i, float v) {
        (stream == dfd::kGlobal ? global : stream == dfd::kFace ? face : fusion)[i] =
            dfd::float_to_half_bits(v);
    });
}

// Fused preprocessing: one launch writes the global, face and fusion tensors of a whole batch.
//
// Thread t handles one output pixel (all three channels) of one stream of one image; the tasks of
// an image are laid out global (252x252), face (252x252), fusion (224x224), so neighbouring
// threads write neighbouring addresses of the same CHW plane. The per-pixel math is in
// preprocess.cuh, which the test suite also compiles for the host.
#include "preprocess.cuh"

namespace {

constexpr long long kCropPixels = (long long)dfd::kCrop * dfd::kCrop;
constexpr long long kFusionPixels = (long long)dfd::kFusion * dfd::kFusion;
constexpr long long kTasksPerImage = 2 * kCropPixels + kFusionPixels;

template <typename Store>
__device__ __forceinline__ void preprocess_task(const dfd::Job* jobs, int batch, Store store) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)batch * kTasksPerImage) return;
    const int n = (int)(t / kTasksPerImage);
    long long r = t % kTasksPerImage;
    int stream = dfd::kGlobal;
    if (r >= kCropPixels) {
        r -= kCropPixels;
        stream = dfd::kFace;
        if (r >= kCropPixels) {
            r -= kCropPixels;
            stream = dfd::kFusionStream;
        }
    }
    const int side = dfd::stream_side(stream);
    const int y = (int)(r / side), x = (int)(r % side);
    float v[3];
    dfd::stream_pixel(jobs[n], stream, x, y, v);
    const long long plane = (long long)side * side;
    const long long base = (long long)n * 3 * plane + (long long)y * side + x;
    for (int c = 0; c < 3; ++c) store(stream, base + c * plane, v[c]);
}

}  // namespace

// Outputs: global and face [N,3,252,252], fusion [N,3,224,224], float32.
extern "C" __global__ void dfd_preprocess_f32(const dfd::Job* jobs, int batch, float* global,
                                              float* face, float* fusion) {
    preprocess_task(jobs, batch, [&](int stream, long long i, float v) {
        (stream == dfd::kGlobal ? global : stream == dfd::kFace ? face : fusion)[i] = v;
    });
}

// Same outputs in IEEE half precision (bits), rounded to nearest even.
extern "C" __global__ void dfd_preprocess_f16(const dfd::Job* jobs, int batch, unsigned short* global,
                                              unsigned short* face, unsigned short* fusion) {
    preprocess_task(jobs, batch, [&](int stream, long long i, float v) {
        (stream == dfd::kGlobal ? global : stream == dfd::kFace ? face : fusion)[i] =
            dfd::float_to_half_bits(v);
    });
}

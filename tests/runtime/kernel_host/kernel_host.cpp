// Host build of the CUDA kernels' per-pixel math, loaded by test_cuda_kernels.py through ctypes.
// Each entry point loops over output pixels exactly as the CUDA kernels' threads do, calling the
// same header functions. Build: g++ -O2 -std=c++17 -ffp-contract=off -shared -fPIC.
#include "preprocess.cuh"
#include "vote.cuh"

#include <cstddef>

namespace {
dfd::Image image_of(const unsigned char* data, long long pitch, int width, int height, int order) {
    return dfd::Image{data, pitch, width, height, order};
}
}  // namespace

extern "C" {

// cv2.resize(img, (dw, dh), interpolation) -> out [dh, dw, 3] uint8 in RGB order.
void host_resize(const unsigned char* data, long long pitch, int width, int height, int order, int dw,
                 int dh, int interp, unsigned char* out) {
    const dfd::Window src = dfd::whole(image_of(data, pitch, width, height, order));
    for (int y = 0; y < dh; ++y)
        for (int x = 0; x < dw; ++x) dfd::resize_pixel(src, dw, dh, interp, x, y, out + 3LL * (y * dw + x));
}

// uint8 RGB [side, side, 3] of one stream (0 global, 1 face, 2 fusion), before normalisation.
void host_stream_u8(const unsigned char* data, long long pitch, int width, int height, int order, int stream,
                    double x1, double y1, double x2, double y2, double margin, unsigned char* out) {
    const dfd::Job job{image_of(data, pitch, width, height, order), x1, y1, x2, y2, margin};
    const int side = dfd::stream_side(stream);
    for (int y = 0; y < side; ++y)
        for (int x = 0; x < side; ++x) {
            unsigned char* o = out + 3LL * (y * side + x);
            if (stream == dfd::kGlobal)
                dfd::global_pixel(job.image, x, y, o);
            else if (stream == dfd::kFace)
                dfd::face_pixel(dfd::job_face_window(job), x, y, o);
            else
                dfd::fusion_pixel(job.image, x, y, o);
        }
}

// Normalised float32 CHW [3, side, side] of one stream, as the fused kernel writes it.
void host_stream_f32(const unsigned char* data, long long pitch, int width, int height, int order, int stream,
                     double x1, double y1, double x2, double y2, double margin, float* out) {
    const dfd::Job job{image_of(data, pitch, width, height, order), x1, y1, x2, y2, margin};
    const int side = dfd::stream_side(stream);
    const long long plane = (long long)side * side;
    for (int y = 0; y < side; ++y)
        for (int x = 0; x < side; ++x) {
            float v[3];
            dfd::stream_pixel(job, stream, x, y, v);
            for (int c = 0; c < 3; ++c) out[c * plane + y * side + x] = v[c];
        }
}

// sizeof(dfd::Job) and its field offsets, to check cuda_kernels.JOB_DTYPE against the compiler.
void host_job_layout(long long* out) {
    out[0] = sizeof(dfd::Job);
    out[1] = offsetof(dfd::Job, image) + offsetof(dfd::Image, data);
    out[2] = offsetof(dfd::Job, image) + offsetof(dfd::Image, pitch);
    out[3] = offsetof(dfd::Job, image) + offsetof(dfd::Image, width);
    out[4] = offsetof(dfd::Job, image) + offsetof(dfd::Image, height);
    out[5] = offsetof(dfd::Job, image) + offsetof(dfd::Image, order);
    out[6] = offsetof(dfd::Job, face_x1);
    out[7] = offsetof(dfd::Job, face_y1);
    out[8] = offsetof(dfd::Job, face_x2);
    out[9] = offsetof(dfd::Job, face_y2);
    out[10] = offsetof(dfd::Job, face_margin);
}

void host_float_to_half(const float* in, long long n, unsigned short* out) {
    for (long long i = 0; i < n; ++i) out[i] = dfd::float_to_half_bits(in[i]);
}

// probs [n, 3] float32 -> discretised vote [n] and raw weighted mean [n], float64.
void host_vote(const float* probs, long long n, const double* weights, double* score, double* mean) {
    for (long long i = 0; i < n; ++i) {
        score[i] = dfd::discretised_vote(probs + 3 * i, weights);
        mean[i] = dfd::weighted_mean(probs + 3 * i, weights);
    }
}

// logits [n, 2] float32 -> P(fake) [n] float32.
void host_softmax(const float* logits, long long n, float* out) {
    for (long long i = 0; i < n; ++i) out[i] = dfd::softmax_fake(logits[2 * i], logits[2 * i + 1]);
}
}

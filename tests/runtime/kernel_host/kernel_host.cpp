// Host build of the CUDA kernels' per-pixel math, loaded by test_cuda_kernels.py through ctypes.
// Each entry point loops over output pixels exactly as the CUDA kernels' threads do, calling the
// same header functions. Build: g++ -O2 -std=c++17 -ffp-contract=off -shared -fPIC.
#include "preprocess.cuh"
#include "vote.cuh"

#include <cstddef>
#include <cstring>
#include <memory>

namespace {
// preprocess_row_block's executor on the host: the block's threads one after another between
// barriers, in the order given (a permutation of 0..kRowThreads-1), each with its own state.
struct HostBlockExec {
    const int* order;
    dfd::RowPlan shared_plan;
    alignas(16) unsigned char buffer[dfd::kStageBytes];
    int slot_offsets[dfd::kStageSlots];
    dfd::RowThread threads[dfd::kRowThreads];

    dfd::RowPlan& plan() { return shared_plan; }
    unsigned char* stage() { return buffer; }
    int* slots() { return slot_offsets; }
    void sync() {}
    template <typename F>
    void leader(F f) { f(); }
    template <typename F>
    void each(F f) {
        for (int i = 0; i < dfd::kRowThreads; ++i) f(order[i], threads[order[i]]);
    }
};

// preprocess_column_block's executor on the host: the block's threads in the order given (a
// permutation of 0..kColumnThreads-1) on each side of its barrier.
static_assert(dfd::kColumnThreads == dfd::kRowThreads, "one thread order serves both block kernels");
struct HostColumnExec {
    const int* order;
    dfd::ColumnPlan shared_plan;
    dfd::ColumnPlan& plan() { return shared_plan; }
    void sync() {}
    template <typename F>
    void each(F f) {
        for (int i = 0; i < dfd::kColumnThreads; ++i) f(order[i]);
    }
};

// The fused kernels' store on the host: the three stream tensors, float32 or IEEE half bits.
struct HostStore {
    void* outputs[3];
    bool half;
    void operator()(int stream, long long i, float v) const {
        if (half)
            static_cast<unsigned short*>(outputs[stream])[i] = dfd::float_to_half_bits(v);
        else
            static_cast<float*>(outputs[stream])[i] = v;
    }
};

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
    const dfd::Job job{image_of(data, pitch, width, height, order), dfd::Image{}, x1, y1, x2, y2, margin};
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
    const dfd::Job job{image_of(data, pitch, width, height, order), dfd::Image{}, x1, y1, x2, y2, margin};
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
    const size_t image = offsetof(dfd::Job, image), face = offsetof(dfd::Job, face);
    const size_t fields[] = {offsetof(dfd::Image, data), offsetof(dfd::Image, pitch), offsetof(dfd::Image, width),
                             offsetof(dfd::Image, height), offsetof(dfd::Image, order)};
    out[0] = sizeof(dfd::Job);
    for (int i = 0; i < 5; ++i) out[1 + i] = image + fields[i];
    for (int i = 0; i < 5; ++i) out[6 + i] = face + fields[i];
    out[11] = offsetof(dfd::Job, face_x1);
    out[12] = offsetof(dfd::Job, face_y1);
    out[13] = offsetof(dfd::Job, face_x2);
    out[14] = offsetof(dfd::Job, face_y2);
    out[15] = offsetof(dfd::Job, face_margin);
}

// Threads a dfd_preprocess launch needs per image: one per task.
long long host_tasks_per_image() { return dfd::kTasksPerImage; }

// What dfd_preprocess_f32 / _f16 do, task by task, on the host: the CUDA grid's threads in order.
void host_preprocess(const dfd::Job* jobs, int batch, int half, void* global, void* face, void* fusion) {
    const HostStore store{{global, face, fusion}, half != 0};
    for (long long t = 0; t < (long long)batch * dfd::kTasksPerImage; ++t) dfd::preprocess_task(jobs, t, store);
}

// What dfd_preprocess_rows_f32 / _f16 do on the host: the blocks in order, each block's threads in
// `thread_order` (kRowThreads indices) between its barriers, the shared buffers poisoned first so
// that a read of a byte no thread staged shows.
void host_preprocess_rows(const dfd::Job* jobs, int batch, int half, void* global, void* face, void* fusion,
                          const int* thread_order) {
    const HostStore store{{global, face, fusion}, half != 0};
    const auto ex = std::make_unique<HostBlockExec>();
    ex->order = thread_order;
    for (int b = 0; b < batch * dfd::kRowsPerImage; ++b) {
        for (unsigned char& byte : ex->buffer) byte = 0xA5;
        for (int& offset : ex->slot_offsets) offset = 0x5A5A5A5A;
        dfd::preprocess_row_block(*ex, jobs, b, store);
    }
}

// Per row block of a batch: 1 where it takes the staged schedule, 0 where it runs per pixel.
void host_row_staged(const dfd::Job* jobs, int batch, int* out) {
    for (int b = 0; b < batch * dfd::kRowsPerImage; ++b) out[b] = dfd::row_plan(jobs, b).staged ? 1 : 0;
}

// Row blocks a dfd_preprocess_rows launch needs per image, and the threads of each.
long long host_rows_per_image() { return dfd::kRowsPerImage; }
int host_row_threads() { return dfd::kRowThreads; }

// What dfd_preprocess_columns_f32 / _f16 do on the host: the blocks in order, each block's threads
// in `thread_order` (kColumnThreads indices), its shared plan poisoned first.
void host_preprocess_columns(const dfd::Job* jobs, int batch, int half, void* global, void* face, void* fusion,
                             const int* thread_order) {
    const HostStore store{{global, face, fusion}, half != 0};
    HostColumnExec ex{thread_order, {}};
    for (int b = 0; b < batch * dfd::kColumnBlocksPerImage; ++b) {
        std::memset(static_cast<void*>(&ex.shared_plan), 0xA5, sizeof ex.shared_plan);
        dfd::preprocess_column_block(ex, jobs, batch, b, store);
    }
}

// Column blocks a dfd_preprocess_columns launch needs per image.
long long host_column_blocks_per_image() { return dfd::kColumnBlocksPerImage; }

// What dfd_vote does on the host, image by image.
void host_vote_kernel(const float* logits_global, const float* logits_face, const float* logits_fusion,
                      const double* weights, int batch, float* probs, double* score, double* mean) {
    const float* const logits[dfd::kStreams] = {logits_global, logits_face, logits_fusion};
    for (int n = 0; n < batch; ++n) dfd::vote_image(logits, weights, n, probs, score, mean);
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

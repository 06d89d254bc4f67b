// Fused preprocessing: one launch writes the global, face and fusion tensors of a whole batch.
//
// dfd_preprocess_columns_*: block b runs dfd::preprocess_column_block (dfd::kColumnRows output rows
// of one stream of one image, each thread walking one column down them), what the runtime uses: the
// fastest on 1080x1440 and 480x640 photos on an H100. dfd_preprocess_*: thread t runs task t of
// dfd::preprocess_task (two vertically adjacent output pixels). dfd_preprocess_rows_*: block b runs
// output row b of dfd::preprocess_row_block, which stages source rows in shared memory: the fastest
// on 12-MP photos (benchmarks/gpu_check.py times all three). The per-pixel math and the work
// decompositions are in preprocess.cuh, which the test suite also compiles for the host.
#include "preprocess.cuh"

namespace {

// Where the value of one channel of one output pixel goes: the stream's tensor, float32 or IEEE half
// bits (round to nearest even). A conditional picks the tensor, not an array index, which would
// put the three pointers in local memory.
__device__ __forceinline__ float convert(float v, float*) { return v; }
__device__ __forceinline__ unsigned short convert(float v, unsigned short*) { return dfd::float_to_half_bits(v); }

template <typename T>
struct TensorStore {
    T* global;
    T* face;
    T* fusion;
    __device__ __forceinline__ void operator()(int stream, long long i, float v) const {
        T* const tensor = stream == dfd::kGlobal ? global : stream == dfd::kFace ? face : fusion;
        tensor[i] = convert(v, tensor);
    }
};

template <typename Store>
__device__ __forceinline__ void run_task(const dfd::Job* jobs, int batch, Store store) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)batch * dfd::kTasksPerImage) return;
    dfd::preprocess_task(jobs, t, store);
}

// preprocess_row_block's executor on the GPU: the block's threads, its barrier, its shared memory.
struct BlockExec {
    dfd::RowPlan* shared_plan;
    unsigned char* buffer;
    int* slot_offsets;
    dfd::RowThread thread;

    __device__ dfd::RowPlan& plan() { return *shared_plan; }
    __device__ unsigned char* stage() { return buffer; }
    __device__ int* slots() { return slot_offsets; }
    __device__ void sync() { __syncthreads(); }
    template <typename F>
    __device__ void leader(F f) {
        if (threadIdx.x == 0) f();
    }
    template <typename F>
    __device__ void each(F f) {
        f((int)threadIdx.x, thread);
    }
};

template <typename Store>
__device__ __forceinline__ void run_row_block(const dfd::Job* jobs, int batch, Store store) {
    __shared__ dfd::RowPlan plan;
    __shared__ __align__(16) unsigned char buffer[dfd::kStageBytes];
    __shared__ int slot_offsets[dfd::kStageSlots];
    if ((long long)blockIdx.x >= (long long)batch * dfd::kRowsPerImage) return;  // uniform per block
    BlockExec ex{&plan, buffer, slot_offsets, {}};
    dfd::preprocess_row_block(ex, jobs, (int)blockIdx.x, store);
}

// preprocess_column_block's executor on the GPU.
struct ColumnExec {
    dfd::ColumnPlan* shared_plan;
    __device__ dfd::ColumnPlan& plan() { return *shared_plan; }
    __device__ void sync() { __syncthreads(); }
    template <typename F>
    __device__ void each(F f) {
        f((int)threadIdx.x);
    }
};

template <typename Store>
__device__ __forceinline__ void run_column_block(const dfd::Job* jobs, int batch, Store store) {
    __shared__ dfd::ColumnPlan plan;
    if ((long long)blockIdx.x >= (long long)batch * dfd::kColumnBlocksPerImage) return;  // uniform per block
    ColumnExec ex{&plan};
    dfd::preprocess_column_block(ex, jobs, batch, (int)blockIdx.x, store);
}

}  // namespace

// Launch bounds: 256-thread blocks (cuda_kernels.CudaKernels.BLOCK), at least 4 resident per SM, so
// ptxas holds the kernels to 64 registers (72 unbounded: 3 blocks). On an H100 that took a batch of
// 32 1080x1440 photos from 300 to 260 us when it was introduced. The per-pixel kernels spill 40 bytes
// (a pair's second cell; 80 registers without spilling, at 3 blocks per SM, measured slower), the
// column kernels 32, the row kernels up to 56 bytes in their plan, staging and image-edge paths
// (benchmarks/gpu_preprocess_tuning.md).
#define DFD_PREPROCESS_BOUNDS __launch_bounds__(256, 4)

// One decomposition's two kernels: NAME_f32 writes global and face [N,3,252,252] and fusion
// [N,3,224,224] in float32, NAME_f16 the same in IEEE half precision (bits, rounded to nearest
// even); RUN(jobs, batch, store) is the decomposition's block or thread body.
#define DFD_PREPROCESS_KERNELS(NAME, RUN)                                                                   \
    extern "C" __global__ void DFD_PREPROCESS_BOUNDS NAME##_f32(const dfd::Job* jobs, int batch, float* global, \
                                                                float* face, float* fusion) {                \
        RUN(jobs, batch, TensorStore<float>{global, face, fusion});                                         \
    }                                                                                                       \
    extern "C" __global__ void DFD_PREPROCESS_BOUNDS NAME##_f16(                                            \
        const dfd::Job* jobs, int batch, unsigned short* global, unsigned short* face, unsigned short* fusion) { \
        RUN(jobs, batch, TensorStore<unsigned short>{global, face, fusion});                                \
    }

// The pair decomposition: one thread per task of dfd::preprocess_task, in 256-thread blocks.
DFD_PREPROCESS_KERNELS(dfd_preprocess, run_task)

// The row decomposition: batch * dfd::kRowsPerImage blocks of dfd::kRowThreads threads.
DFD_PREPROCESS_KERNELS(dfd_preprocess_rows, run_row_block)

// The column decomposition: batch * dfd::kColumnBlocksPerImage blocks of dfd::kColumnThreads threads.
DFD_PREPROCESS_KERNELS(dfd_preprocess_columns, run_column_block)

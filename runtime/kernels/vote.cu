// Softmax of the three streams' logits and the discretised vote, one thread per image.
// The math is in vote.cuh (dfd::vote_image), which the test suite also compiles for the host.
#include "vote.cuh"

// logits: three [N,2] float32 arrays (global, face, fusion); weights: three doubles.
// Outputs per image: probs [N,3] float32 (raw P(fake) per stream), score [N] float64 (the
// discretised vote, one of 0.0 .. 1.0) and mean [N] float64 (the raw weighted mean).
extern "C" __global__ void dfd_vote(const float* logits_global, const float* logits_face,
                                    const float* logits_fusion, double w_global, double w_face,
                                    double w_fusion, int batch, float* probs, double* score,
                                    double* mean) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= batch) return;
    const float* const logits[dfd::kStreams] = {logits_global, logits_face, logits_fusion};
    const double weights[dfd::kStreams] = {w_global, w_face, w_fusion};
    dfd::vote_image(logits, weights, n, probs, score, mean);
}

// Softmax and the reference's discretised vote, shared by the CUDA kernel and the host test.
//
// The reference writes each stream's P(fake) as f"{p:.1f}", averages with np.average (weights
// global 2, face 1, fusion 2) and rounds with np.round(x, 1). This file reproduces those three
// steps exactly, in double:
//   * f"{p:.1f}" of a float32 p is the correctly rounded decimal of p's exact binary value, ties
//     to even. p * 10 is exact in double (24 + 4 significant bits), so rint(p * 10) is that
//     rounding, and rint(p * 10) / 10 is float(f"{p:.1f}") (a correctly rounded division).
//   * np.average(q, weights=w) is ((w0*q0 + w1*q1) + w2*q2) / ((w0 + w1) + w2) in float64.
//   * np.round(x, 1) is rint(x * 10) / 10 in float64.
// Floating point must not be contracted into FMAs: device code uses explicit intrinsics, host
// builds must use -ffp-contract=off.
#pragma once

#include "preprocess.cuh"

namespace dfd {

constexpr int kStreams = 3;  // global, face, fusion (the order of logits, probs and weights)

// P(class 1) of a two-class softmax, as runtime/vote.py computes it: in float64 as
// 1 / (1 + exp(l0 - l1)) in its overflow-free form, rounded once to float32. (CUDA's and glibc's
// double exp differ by at most an ulp of a double, invisible after the float32 rounding except
// on a vanishing set of inputs.) NaN logits give NaN.
DFD_HD float softmax_fake(float l0, float l1) {
    const double d = dsub((double)l0, (double)l1);
    const double decay = exp(-fabs(d));
    return (float)(d <= 0.0 ? ddiv(1.0, dadd(1.0, decay)) : ddiv(decay, dadd(1.0, decay)));
}

// float(f"{p:.1f}") for a float32 p.
DFD_HD double one_decimal(float p) { return ddiv(rint(dmul((double)p, 10.0)), 10.0); }

// np.round(x, 1) for a float64 x.
DFD_HD double round_half_even_1(double x) { return ddiv(rint(dmul(x, 10.0)), 10.0); }

// The discretised vote of three stream probabilities (global, face, fusion).
DFD_HD double discretised_vote(const float probs[kStreams], const double weights[kStreams]) {
    double num = 0.0, den = 0.0;
    for (int s = 0; s < kStreams; ++s) {
        num = dadd(num, dmul(one_decimal(probs[s]), weights[s]));
        den = dadd(den, weights[s]);
    }
    return round_half_even_1(ddiv(num, den));
}

// The raw (undiscretised) weighted mean, reported next to the vote.
DFD_HD double weighted_mean(const float probs[kStreams], const double weights[kStreams]) {
    double num = 0.0, den = 0.0;
    for (int s = 0; s < kStreams; ++s) {
        num = dadd(num, dmul((double)probs[s], weights[s]));
        den = dadd(den, weights[s]);
    }
    return ddiv(num, den);
}

// The vote kernel's work for image n: softmax of each stream's logits [N,2], then the outputs
// probs [N,3] float32, score [N] and mean [N] float64.
DFD_HD void vote_image(const float* const logits[kStreams], const double weights[kStreams], int n,
                       float* probs, double* score, double* mean) {
    float p[kStreams];
    for (int s = 0; s < kStreams; ++s) {
        p[s] = softmax_fake(logits[s][2 * n], logits[s][2 * n + 1]);
        probs[kStreams * n + s] = p[s];
    }
    score[n] = discretised_vote(p, weights);
    mean[n] = weighted_mean(p, weights);
}

}  // namespace dfd

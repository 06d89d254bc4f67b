// Per-pixel preprocessing math of the three streams, shared by the CUDA kernel and the host test.
//
// Every function here is `__host__ __device__` under NVRTC/nvcc and plain inline C++ under g++, so
// the test suite compiles this very file for the host and checks it against OpenCV/NumPy (CI has
// no GPU). The reference resizes uint8 images with cv2.resize, so the resize functions reproduce
// OpenCV's own uint8 arithmetic step by step (coordinate maps in double, coefficient tables in
// float, fixed-point or float accumulation exactly where OpenCV uses it), not an idealised filter:
//   * INTER_AREA, integer scale  -> OpenCV's "area fast" path (block mean; 2x2 rounds half up).
//   * INTER_AREA, scale >= 1     -> OpenCV's general area path (fractional cell weights, float sums).
//   * INTER_AREA, either scale < 1 -> OpenCV's bilinear emulation of area (11-bit fixed point).
//   * INTER_CUBIC                -> A = -0.75, 11-bit fixed point horizontally, float vertical pass
//                                   (OpenCV's SIMD path, which covers every output row of width
//                                   224*3 and 256*3), border replicate.
// OpenCV's x86 wheels may route uint8 INTER_CUBIC through Intel IPP instead, whose arithmetic is
// not public: there the result differs by at most one grey level on a few percent of pixels (see
// tests/runtime/test_cuda_kernels.py for the measured rate); with IPP off (cv2.setUseOptimized
// (False), and on ARM/Jetson where IPP does not exist) this code is bit-exact.
//
// Floating point must not be contracted into FMAs (OpenCV's x86 build does separate multiply and
// add): device code uses the explicit round-to-nearest intrinsics below, host builds must use
// -ffp-contract=off.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DFD_HD __host__ __device__ __forceinline__
#else
#define DFD_HD inline
#endif

#ifndef __CUDACC_RTC__
#include <math.h>
#endif

namespace dfd {

// ---- sizes and constants of the three streams -------------------------------------------------
constexpr int kCrop = 252;        // global and face network input
constexpr int kFusion = 224;      // fusion network input
constexpr int kFaceResize = 256;  // face crop is resized to this before its 252 center crop
constexpr int kCoefBits = 11;     // OpenCV INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;

enum Interpolation { kInterIdentity = 0, kInterArea = 3, kInterCubic = 2 };
enum ChannelOrder { kRGB = 0, kBGR = 1 };

// ---- arithmetic that is never contracted into FMA -----------------------------------------------
// On the device, the round-to-nearest intrinsic (never fused); on the host, the plain operator.
#ifdef __CUDA_ARCH__
#define DFD_ROUNDED(device_intrinsic, host_expression) return device_intrinsic
#else
#define DFD_ROUNDED(device_intrinsic, host_expression) return host_expression
#endif
DFD_HD float fmul(float a, float b) { DFD_ROUNDED(__fmul_rn(a, b), a * b); }
DFD_HD float fadd(float a, float b) { DFD_ROUNDED(__fadd_rn(a, b), a + b); }
DFD_HD float fsub(float a, float b) { return fadd(a, -b); }
DFD_HD float fdiv(float a, float b) { DFD_ROUNDED(__fdiv_rn(a, b), a / b); }
DFD_HD double dmul(double a, double b) { DFD_ROUNDED(__dmul_rn(a, b), a * b); }
DFD_HD double dadd(double a, double b) { DFD_ROUNDED(__dadd_rn(a, b), a + b); }
DFD_HD double dsub(double a, double b) { return dadd(a, -b); }
DFD_HD double ddiv(double a, double b) { DFD_ROUNDED(__ddiv_rn(a, b), a / b); }
#undef DFD_ROUNDED

DFD_HD int imin(int a, int b) { return a < b ? a : b; }
DFD_HD int imax(int a, int b) { return a > b ? a : b; }
DFD_HD int iclamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
DFD_HD int cv_floor(double v) { return (int)floor(v); }
DFD_HD int cv_ceil(double v) { return (int)ceil(v); }
DFD_HD int cv_round(float v) { return (int)rintf(v); }   // round half to even, as cvRound
DFD_HD int cv_round_d(double v) { return (int)rint(v); }
DFD_HD unsigned char saturate_u8(int v) { return (unsigned char)iclamp(v, 0, 255); }
DFD_HD short saturate_s16(int v) { return (short)iclamp(v, -32768, 32767); }

// ---- source images ---------------------------------------------------------------------------
// A uint8 HWC 3-channel image anywhere in memory, with any row pitch (bytes between rows).
struct Image {
    const unsigned char* data;
    long long pitch;
    int width;
    int height;
    int order;  // ChannelOrder of the bytes; outputs are always RGB
};

// A rectangle of an image seen as its own image: pixels outside the image read as black. This is
// how the reference's face crop (copyMakeBorder with zeros, then slicing) looks to the resize.
struct Window {
    Image image;
    int x0, y0;       // top-left corner in image coordinates (may be negative)
    int width, height;
};

DFD_HD Window whole(const Image& img) { return Window{img, 0, 0, img.width, img.height}; }

// RGB of window pixel (x, y); coordinates are inside the window.
DFD_HD void fetch(const Window& w, int x, int y, int rgb[3]) {
    const int ix = w.x0 + x, iy = w.y0 + y;
    if (ix < 0 || iy < 0 || ix >= w.image.width || iy >= w.image.height) {
        rgb[0] = rgb[1] = rgb[2] = 0;
        return;
    }
    const unsigned char* p = w.image.data + (long long)iy * w.image.pitch + 3LL * ix;
    if (w.image.order == kBGR) {
        rgb[0] = p[2]; rgb[1] = p[1]; rgb[2] = p[0];
    } else {
        rgb[0] = p[0]; rgb[1] = p[1]; rgb[2] = p[2];
    }
}

// ---- which interpolation the fusion stream uses -------------------------------------------------
// Reference: INTER_AREA when the height shrinks, INTER_CUBIC when it grows. Its quirk (an image
// exactly 224 high is not resized) is replaced by: INTER_AREA if the width shrinks, INTER_CUBIC if
// it grows, a copy if the image already is 224x224.
DFD_HD int fusion_interpolation(int width, int height) {
    if (height > kFusion) return kInterArea;
    if (height < kFusion) return kInterCubic;
    if (width > kFusion) return kInterArea;
    if (width < kFusion) return kInterCubic;
    return kInterIdentity;
}

// ---- OpenCV's resize, one output pixel (all three channels) at a time ----------------------------
// Scale factors exactly as cv::resize derives them from the sizes.
struct Scale {
    double inv_x, inv_y;  // dst / src
    double x, y;          // 1 / inv
};
DFD_HD Scale resize_scale(int sw, int sh, int dw, int dh) {
    Scale s;
    s.inv_x = ddiv((double)dw, (double)sw);
    s.inv_y = ddiv((double)dh, (double)sh);
    s.x = ddiv(1.0, s.inv_x);
    s.y = ddiv(1.0, s.inv_y);
    return s;
}

// cv::resize's is_area_fast test: both scales integral to within DBL_EPSILON.
DFD_HD bool area_fast(const Scale& s, int* ix, int* iy) {
    *ix = cv_round_d(s.x);
    *iy = cv_round_d(s.y);
    const double eps = 2.220446049250313e-16;
    return fabs(dsub(s.x, (double)*ix)) < eps && fabs(dsub(s.y, (double)*iy)) < eps;
}

// Integer-scale area: mean of an ix-by-iy block. OpenCV rounds the 2x2 case half up in integers
// ((sum + 2) >> 2) and every other case through float (sum * (1/area), round half to even).
DFD_HD void resize_area_fast(const Window& src, int ix, int iy, int dx, int dy, unsigned char out[3]) {
    int sum[3] = {0, 0, 0};
    for (int j = 0; j < iy; ++j)
        for (int i = 0; i < ix; ++i) {
            int px[3];
            fetch(src, dx * ix + i, dy * iy + j, px);
            sum[0] += px[0]; sum[1] += px[1]; sum[2] += px[2];
        }
    if (ix == 2 && iy == 2) {
        for (int c = 0; c < 3; ++c) out[c] = (unsigned char)((sum[c] + 2) >> 2);
        return;
    }
    const float scale = fdiv(1.f, (float)(ix * iy));
    for (int c = 0; c < 3; ++c) out[c] = saturate_u8(cv_round(fmul((float)sum[c], scale)));
}

// One output cell of OpenCV's computeResizeAreaTab: an optional partial head pixel, full pixels
// [first, last) and an optional partial tail pixel, with their float weights.
struct AreaCell {
    int first, last;
    bool head, tail;
    float a_head, a_mid, a_tail;
};
DFD_HD AreaCell area_cell(int d, int ssize, double scale) {
    AreaCell c;
    const double fs1 = dmul((double)d, scale);
    const double fs2 = dadd(fs1, scale);
    const double rest = dsub((double)ssize, fs1);
    const double cell = scale < rest ? scale : rest;
    int s1 = cv_ceil(fs1), s2 = cv_floor(fs2);
    s2 = imin(s2, ssize - 1);
    s1 = imin(s1, s2);
    c.first = s1;
    c.last = s2;
    // a_head and a_tail only where OpenCV has those taps: a zero numerator (a cell edge on a pixel
    // edge) would send the division down its slow path, for every lane of the warp
    c.head = dsub((double)s1, fs1) > 1e-3;
    c.a_head = c.head ? (float)ddiv(dsub((double)s1, fs1), cell) : 0.f;
    c.a_mid = (float)ddiv(1.0, cell);
    const double t = dsub(fs2, (double)s2);
    c.tail = t > 1e-3;
    double tw = t < 1.0 ? t : 1.0;
    tw = tw < cell ? tw : cell;
    c.a_tail = c.tail ? (float)ddiv(tw, cell) : 0.f;
    return c;
}

// The source pixels a cell reads: [cell_begin, cell_end), its partial head and tail included.
DFD_HD int cell_begin(const AreaCell& c) { return c.first - (c.head ? 1 : 0); }
DFD_HD int cell_end(const AreaCell& c) { return c.last + (c.tail ? 1 : 0); }

// The weight of source pixel s (cell_begin <= s < cell_end) in cell c.
DFD_HD float cell_weight(const AreaCell& c, int s) { return s < c.first ? c.a_head : s < c.last ? c.a_mid : c.a_tail; }

// fl(v * weight) for a uint8 v, without converting v: the float 2^23 + v has v in its low mantissa
// bits (one integer instruction builds it, instead of a quarter-rate I2F), and one fused
// multiply-add (2^23 + v) * weight + bias, with bias = tap_bias(weight) = -2^23 * weight (exact: a
// power-of-two multiple), is v * weight exactly before its single rounding, so the result is the
// rounded product bit for bit. std::fmaf is exact on the host too.
DFD_HD float tap_bias(float weight) { return fmul(-8388608.f, weight); }
DFD_HD float biased_product(unsigned v, float weight, float bias) {
#ifdef __CUDA_ARCH__
    return __fmaf_rn(__uint_as_float(0x4B000000u | v), weight, bias);
#else
    union { unsigned int u; float f; } bits;
    bits.u = 0x4B000000u | v;
    return fmaf(bits.f, weight, bias);
#endif
}

// buf += bytes p[0..2] * weight, channel by channel, in OpenCV's operation order (bias: tap_bias).
DFD_HD void area_tap(const unsigned char* p, float weight, float bias, float buf[3]) {
    for (int c = 0; c < 3; ++c) buf[c] = fadd(buf[c], biased_product(p[c], weight, bias));
}

// Horizontal weighted sums over an area cell of R stored rows, in OpenCV's order: `p` points at the
// cell's pixel cx.first in the first row, row r's at p + r * delta, and every pixel of the cell
// (cx.first - 1 with a head, cx.last with a tail) is readable there, in global or shared memory.
// buf[3 * r ...] gets row r's three sums. The hot loop of the fused kernel: one walk over the cell
// for all R rows (two rows keep both rows' loads in flight), a pointer over the bytes in their
// stored channel order, the three sums swapped once at the end (each channel's arithmetic is the
// same, so the order they are summed in is immaterial).
template <int R>
DFD_HD void area_spans(const unsigned char* p, long long delta, const AreaCell& cx, int order, float* buf) {
    const unsigned char* row[R];  // one pointer per row, each walked: no per-tap offset arithmetic
    for (int r = 0; r < R; ++r) row[r] = p + r * delta;
    for (int i = 0; i < 3 * R; ++i) buf[i] = 0.f;
    if (cx.head) {
        const float bias = tap_bias(cx.a_head);
        for (int r = 0; r < R; ++r) area_tap(row[r] - 3, cx.a_head, bias, buf + 3 * r);
    }
    const float bias = tap_bias(cx.a_mid);
    for (int sx = cx.first; sx < cx.last; ++sx)
        for (int r = 0; r < R; ++r) {
            area_tap(row[r], cx.a_mid, bias, buf + 3 * r);
            row[r] += 3;
        }
    if (cx.tail) {
        const float tail_bias = tap_bias(cx.a_tail);
        for (int r = 0; r < R; ++r) area_tap(row[r], cx.a_tail, tail_bias, buf + 3 * r);
    }
    if (order == kBGR) {
        for (int r = 0; r < R; ++r) {
            const float b = buf[3 * r];
            buf[3 * r] = buf[3 * r + 2];
            buf[3 * r + 2] = b;
        }
    }
}

// One stored row's sums (area_spans of one row).
DFD_HD void area_span(const unsigned char* p, const AreaCell& cx, int order, float buf[3]) {
    area_spans<1>(p, 0, cx, order, buf);
}

// Horizontal weighted sum of window row `sy` over an area cell: area_span where the cell lies inside
// the image (always for the fusion stream); a face window's rows that leave the image read through
// fetch (black outside).
DFD_HD void area_row(const Window& src, const AreaCell& cx, int sy, float buf[3]) {
    const int iy = src.y0 + sy;
    const int left = src.x0 + cell_begin(cx), right = src.x0 + cell_end(cx);
    if (iy >= 0 && iy < src.image.height && left >= 0 && right <= src.image.width) {
        area_span(src.image.data + (long long)iy * src.image.pitch + 3LL * (src.x0 + cx.first), cx, src.image.order,
                  buf);
        return;
    }
    buf[0] = buf[1] = buf[2] = 0.f;
    int px[3];
    if (cx.head) {
        fetch(src, cx.first - 1, sy, px);
        for (int c = 0; c < 3; ++c) buf[c] = fadd(buf[c], fmul((float)px[c], cx.a_head));
    }
    for (int sx = cx.first; sx < cx.last; ++sx) {
        fetch(src, sx, sy, px);
        for (int c = 0; c < 3; ++c) buf[c] = fadd(buf[c], fmul((float)px[c], cx.a_mid));
    }
    if (cx.tail) {
        fetch(src, cx.last, sy, px);
        for (int c = 0; c < 3; ++c) buf[c] = fadd(buf[c], fmul((float)px[c], cx.a_tail));
    }
}

DFD_HD void area_accumulate(float sum[3], const float buf[3], float beta) {
    for (int c = 0; c < 3; ++c) sum[c] = fadd(sum[c], fmul(beta, buf[c]));
}

// The horizontal sums over cell cx of window rows first_row .. end_row - 1, in ascending order:
// row_sums(sy, buf) gets row sy's three sums. Where the cells lie inside the image (always for the
// fusion stream) a pointer walks down the rows two at a time, so both rows' loads are in flight,
// with no per-row bounds checks or address arithmetic; a face window's rows that leave the image
// go through area_row (black outside).
template <typename RowSums>
DFD_HD void area_walk(const Window& src, const AreaCell& cx, int first_row, int end_row, RowSums row_sums) {
    float buf[3];
    const int left = src.x0 + cell_begin(cx), right = src.x0 + cell_end(cx);
    if (left >= 0 && right <= src.image.width && src.y0 + first_row >= 0 && src.y0 + end_row <= src.image.height) {
        const unsigned char* p = src.image.data + (long long)(src.y0 + first_row) * src.image.pitch +
                                 3LL * (src.x0 + cx.first);
        int sy = first_row;
        for (; sy + 1 < end_row; sy += 2, p += 2 * src.image.pitch) {
            float two[6];
            area_spans<2>(p, src.image.pitch, cx, src.image.order, two);
            row_sums(sy, two);
            row_sums(sy + 1, two + 3);
        }
        if (sy < end_row) {
            area_span(p, cx, src.image.order, buf);
            row_sums(sy, buf);
        }
        return;
    }
    for (int sy = first_row; sy < end_row; ++sy) {
        area_row(src, cx, sy, buf);
        row_sums(sy, buf);
    }
}

// OpenCV's general area sum of output cell (cx, cy), before rounding.
DFD_HD void area_cell_sum(const Window& src, const AreaCell& cx, const AreaCell& cy, float sum[3]) {
    sum[0] = sum[1] = sum[2] = 0.f;
    area_walk(src, cx, cell_begin(cy), cell_end(cy),
              [&](int sy, const float* buf) { area_accumulate(sum, buf, cell_weight(cy, sy)); });
}

// area_cell_sum of two vertically adjacent cells, cy0 and the next output row's cy1, in one walk
// down their rows (contiguous: consecutive cells tile the source): the fractional source row they
// share is summed once, and the cells share cx. Each sum adds its rows in ascending order, as OpenCV
// does, so it equals area_cell_sum of its cell bit for bit.
DFD_HD void area_cell_sum_pair(const Window& src, const AreaCell& cx, const AreaCell& cy0, const AreaCell& cy1,
                               float sum0[3], float sum1[3]) {
    for (int c = 0; c < 3; ++c) sum0[c] = sum1[c] = 0.f;
    area_walk(src, cx, cell_begin(cy0), cell_end(cy1), [&](int sy, const float* buf) {
        if (sy < cell_end(cy0)) area_accumulate(sum0, buf, cell_weight(cy0, sy));
        if (sy >= cell_begin(cy1)) area_accumulate(sum1, buf, cell_weight(cy1, sy));
    });
}

// General area downscale (both scales >= 1, not both integral).
DFD_HD void resize_area_general(const Window& src, const Scale& s, int dx, int dy, unsigned char out[3]) {
    float sum[3];
    area_cell_sum(src, area_cell(dx, src.width, s.x), area_cell(dy, src.height, s.y), sum);
    for (int c = 0; c < 3; ++c) out[c] = saturate_u8(cv_round(sum[c]));
}

// Source index and 11-bit fixed-point weights of OpenCV's bilinear emulation of INTER_AREA.
struct LinearTap {
    int s0, s1;
    int w0, w1;
};
DFD_HD LinearTap area_linear_tap(int d, int ssize, double scale, double inv_scale, bool clamp_weight) {
    int sx = cv_floor(dmul((double)d, scale));
    float f = (float)dsub((double)(d + 1), dmul((double)(sx + 1), inv_scale));
    f = f <= 0.f ? 0.f : fsub(f, (float)(int)floorf(f));
    if (clamp_weight && sx >= ssize - 1) {  // horizontal only: OpenCV zeroes the weight there
        f = 0.f;
        sx = ssize - 1;
    }
    LinearTap t;
    t.s0 = iclamp(sx, 0, ssize - 1);
    t.s1 = iclamp(sx + 1, 0, ssize - 1);
    t.w0 = saturate_s16(cv_round(fmul(fsub(1.f, f), (float)kCoefScale)));
    t.w1 = saturate_s16(cv_round(fmul(f, (float)kCoefScale)));
    return t;
}

// INTER_AREA with an upscaled dimension: OpenCV's fixed-point bilinear over area-style taps.
DFD_HD void resize_area_linear(const Window& src, const Scale& s, int dx, int dy, unsigned char out[3]) {
    const LinearTap tx = area_linear_tap(dx, src.width, s.x, s.inv_x, true);
    const LinearTap ty = area_linear_tap(dy, src.height, s.y, s.inv_y, false);
    int a[3], b[3], r0[3], r1[3];
    fetch(src, tx.s0, ty.s0, a);
    fetch(src, tx.s1, ty.s0, b);
    for (int c = 0; c < 3; ++c) r0[c] = a[c] * tx.w0 + b[c] * tx.w1;
    fetch(src, tx.s0, ty.s1, a);
    fetch(src, tx.s1, ty.s1, b);
    for (int c = 0; c < 3; ++c) r1[c] = a[c] * tx.w0 + b[c] * tx.w1;
    for (int c = 0; c < 3; ++c)
        out[c] = saturate_u8((((ty.w0 * (r0[c] >> 4)) >> 16) + ((ty.w1 * (r1[c] >> 4)) >> 16) + 2) >> 2);
}

// OpenCV's interpolateCubic (A = -0.75), float, uncontracted.
DFD_HD void cubic_coeffs(float x, float k[4]) {
    const float A = -0.75f;
    const float x1 = fadd(x, 1.f);
    k[0] = fsub(fmul(fadd(fmul(fsub(fmul(A, x1), 5.f * A), x1), 8.f * A), x1), 4.f * A);
    k[1] = fadd(fmul(fmul(fsub(fmul(A + 2.f, x), A + 3.f), x), x), 1.f);
    const float y = fsub(1.f, x);
    k[2] = fadd(fmul(fmul(fsub(fmul(A + 2.f, y), A + 3.f), y), y), 1.f);
    k[3] = fsub(fsub(fsub(1.f, k[0]), k[1]), k[2]);
}

struct CubicTap {
    int s;        // index of the second tap; taps are s-1 .. s+2 (clamped to the image)
    int w[4];     // 11-bit fixed-point weights
};
DFD_HD CubicTap cubic_tap(int d, double scale) {
    float f = (float)dsub(dmul((double)d + 0.5, scale), 0.5);
    const int s = (int)floorf(f);
    f = fsub(f, (float)s);
    float k[4];
    cubic_coeffs(f, k);
    CubicTap t;
    t.s = s;
    for (int i = 0; i < 4; ++i) t.w[i] = saturate_s16(cv_round(fmul(k[i], (float)kCoefScale)));
    return t;
}

// OpenCV's vertical cubic pass runs 128-bit SIMD (8 int16 lanes: SSE baseline on x86, NEON on ARM)
// over the first floor(3*dw / 8) * 8 values of an output row and plain integers over the rest.
constexpr int kCubicSimdLanes = 8;

// INTER_CUBIC: integer horizontal pass, then OpenCV's vertical pass: in float
// (((S3*b3 + S2*b2) + S1*b1) + S0*b0, b = beta / 2^22, round half to even) where OpenCV uses SIMD,
// in 22-bit fixed point ((sum + 2^21) >> 22) on the row's tail.
DFD_HD void resize_cubic(const Window& src, const Scale& s, int dw, int dx, int dy, unsigned char out[3]) {
    const CubicTap tx = cubic_tap(dx, s.x);
    const CubicTap ty = cubic_tap(dy, s.y);
    const float unit = 1.f / (float)(kCoefScale * kCoefScale);
    const int simd_end = (3 * dw / kCubicSimdLanes) * kCubicSimdLanes;
    float acc[3] = {0.f, 0.f, 0.f};
    long long exact[3] = {0, 0, 0};
    for (int j = 3; j >= 0; --j) {
        const int sy = iclamp(ty.s - 1 + j, 0, src.height - 1);
        int row[3] = {0, 0, 0};
        for (int i = 0; i < 4; ++i) {
            int px[3];
            fetch(src, iclamp(tx.s - 1 + i, 0, src.width - 1), sy, px);
            for (int c = 0; c < 3; ++c) row[c] += px[c] * tx.w[i];
        }
        const float b = fmul((float)ty.w[j], unit);
        for (int c = 0; c < 3; ++c) {
            acc[c] = (j == 3) ? fmul((float)row[c], b) : fadd(fmul((float)row[c], b), acc[c]);
            exact[c] += (long long)row[c] * ty.w[j];
        }
    }
    for (int c = 0; c < 3; ++c) {
        if (3 * dx + c < simd_end)
            out[c] = saturate_u8(cv_round(acc[c]));
        else
            out[c] = saturate_u8((int)((exact[c] + (1LL << (2 * kCoefBits - 1))) >> (2 * kCoefBits)));
    }
}

// cv2.resize(src, (dw, dh), interpolation=interp) at output pixel (dx, dy), RGB.
DFD_HD void resize_pixel(const Window& src, int dw, int dh, int interp, int dx, int dy, unsigned char out[3]) {
    if (interp == kInterIdentity || (src.width == dw && src.height == dh)) {
        int px[3];
        fetch(src, dx, dy, px);
        for (int c = 0; c < 3; ++c) out[c] = (unsigned char)px[c];
        return;
    }
    const Scale s = resize_scale(src.width, src.height, dw, dh);
    if (interp == kInterArea && s.x >= 1.0 && s.y >= 1.0) {
        int ix, iy;
        if (area_fast(s, &ix, &iy))
            resize_area_fast(src, ix, iy, dx, dy, out);
        else
            resize_area_general(src, s, dx, dy, out);
    } else if (interp == kInterArea) {
        resize_area_linear(src, s, dx, dy, out);
    } else {
        resize_cubic(src, s, dw, dx, dy, out);
    }
}

// ---- the three streams ---------------------------------------------------------------------
// Center crop of side `side`: top = (h - side) // 2, left = (w - side) // 2, pure slicing. An image
// smaller than `side` on a side (the reference crashes there) is first upscaled with INTER_CUBIC,
// aspect ratio kept: short side -> side, long side -> round(long * side / short) (half to even),
// as runtime/preprocess.py's center_crop documents.
DFD_HD void center_crop_pixel(const Image& img, int side, int x, int y, unsigned char out[3]) {
    if (img.width >= side && img.height >= side) {
        int px[3];
        fetch(Window{img, (img.width - side) / 2, (img.height - side) / 2, side, side}, x, y, px);
        for (int c = 0; c < 3; ++c) out[c] = (unsigned char)px[c];
        return;
    }
    int w = side, h = side;
    if (img.height <= img.width)
        w = (int)rint(ddiv((double)img.width * side, (double)img.height));
    else
        h = (int)rint(ddiv((double)img.height * side, (double)img.width));
    resize_pixel(whole(img), w, h, kInterCubic, x + (w - side) / 2, y + (h - side) / 2, out);
}

// The reference's crop_face_with_margin rectangle for a box (x1, y1, x2, y2): a square of side
// max(w, h) * margin around the box centre, corners truncated toward zero like Python's int().
// Pixels outside the image are black. The window may be one pixel off square, as in the reference.
DFD_HD Window face_window(const Image& img, double x1, double y1, double x2, double y2, double margin) {
    const double w = dsub(x2, x1), h = dsub(y2, y1);
    const double cx = dadd(x1, w / 2.0), cy = dadd(y1, h / 2.0);
    const double half = dmul(w > h ? w : h, margin) / 2.0;
    const int nx1 = (int)dsub(cx, half), ny1 = (int)dsub(cy, half);
    const int nx2 = (int)dadd(cx, half), ny2 = (int)dadd(cy, half);
    return Window{img, nx1, ny1, nx2 - nx1, ny2 - ny1};
}

// uint8 RGB of the global stream (252 center crop) at (x, y).
DFD_HD void global_pixel(const Image& img, int x, int y, unsigned char out[3]) {
    center_crop_pixel(img, kCrop, x, y, out);
}

// uint8 RGB of the face stream at (x, y): the face window resized with INTER_AREA to 256, then its
// 252 center crop. A window with no area means "no usable face": the reference then feeds the
// original image, i.e. the same 252 center crop as the global stream.
DFD_HD void face_pixel(const Window& face, int x, int y, unsigned char out[3]) {
    if (face.width <= 0 || face.height <= 0) {
        global_pixel(face.image, x, y, out);
        return;
    }
    const int off = (kFaceResize - kCrop) / 2;
    resize_pixel(face, kFaceResize, kFaceResize, kInterArea, x + off, y + off, out);
}

// uint8 RGB of the fusion stream (224x224 resize of the whole image) at (x, y).
DFD_HD void fusion_pixel(const Image& img, int x, int y, unsigned char out[3]) {
    resize_pixel(whole(img), kFusion, kFusion, fusion_interpolation(img.width, img.height), x, y, out);
}

// ---- normalisation and output dtype -------------------------------------------------------------
// ImageNet statistics, float32: (v / 255 - mean) / std, as the reference computes in float32, for
// every byte and channel, evaluated by the compiler (IEEE float32 arithmetic, the bits NumPy gets):
// one load instead of two correctly rounded divisions per value.
struct NormaliseTable {
    float value[3][256];
};
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__host__ __device__
#endif
constexpr NormaliseTable make_normalise_table() {
    NormaliseTable t{};
    const float mean[3] = {0.485f, 0.456f, 0.406f};
    const float stdv[3] = {0.229f, 0.224f, 0.225f};
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v) t.value[c][v] = ((float)v / 255.f - mean[c]) / stdv[c];
    return t;
}
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
__device__ constexpr NormaliseTable kNormaliseTable = make_normalise_table();
#else
constexpr NormaliseTable kNormaliseTable = make_normalise_table();
#endif

DFD_HD float normalise(unsigned char v, int channel) { return kNormaliseTable.value[channel][v]; }

// The normalised value of channel `channel` of an area sum: OpenCV's rounding to uint8, then normalise.
DFD_HD float normalised_area_sum(float sum, int channel) { return normalise(saturate_u8(cv_round(sum)), channel); }

// float32 -> IEEE binary16 bits, round to nearest even (what __float2half_rn and NumPy do).
DFD_HD unsigned short float_to_half_bits(float f) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    union { float f; unsigned int u; } v;
    v.f = f;
    const unsigned int u = v.u;
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u)  // inf or nan
        return (unsigned short)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {  // half subnormal or zero
        if (abs < 0x33000000u) return (unsigned short)sign;  // below half of the smallest subnormal
        const unsigned int mant = (abs & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(abs >> 23);  // 14..24: value / 2^-24 = mant >> shift
        unsigned int h = mant >> shift;
        const unsigned int rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    unsigned int h = ((abs >> 13) - (112u << 10));
    const unsigned int rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
#endif
}

// ---- one output pixel of one stream, written in CHW ------------------------------------------
enum Stream { kGlobal = 0, kFace = 1, kFusionStream = 2 };

// What the fused kernel needs per image. The face stream's input, first match wins:
//   face.data != nullptr -> a face image of its own (a user's face crop, or the crop re-encoded the
//                           way the reference's crop files are), whose 252 center crop is taken;
//   x2 > x1 and y2 > y1  -> the face box on `image`: square window with margin, INTER_AREA to 256;
//   otherwise            -> `image` itself (the reference's no-face rule).
struct Job {
    Image image;
    Image face;
    double face_x1, face_y1, face_x2, face_y2;
    double face_margin;
};

DFD_HD Window job_face_window(const Job& job) {
    if (job.face.data != nullptr) return Window{job.face, 0, 0, 0, 0};
    if (!(job.face_x2 > job.face_x1) || !(job.face_y2 > job.face_y1))
        return Window{job.image, 0, 0, 0, 0};
    return face_window(job.image, job.face_x1, job.face_y1, job.face_x2, job.face_y2, job.face_margin);
}

DFD_HD int stream_side(int stream) { return stream == kFusionStream ? kFusion : kCrop; }

// The normalised RGB values of stream `stream` at (x, y) of image `job`.
DFD_HD void stream_pixel(const Job& job, int stream, int x, int y, float out[3]) {
    unsigned char v[3];
    if (stream == kGlobal)
        global_pixel(job.image, x, y, v);
    else if (stream == kFace)
        face_pixel(job_face_window(job), x, y, v);
    else
        fusion_pixel(job.image, x, y, v);
    for (int c = 0; c < 3; ++c) out[c] = normalise(v[c], c);
}

// Where stream `stream` of `job` is OpenCV's general INTER_AREA (fractional cells, the fusion stream
// of a photo over 224 high and most face windows): its window, scale factors and the resize
// coordinate of output pixel 0 (the face stream's 252 center crop of 256). False in every other
// case, which stream_pixel handles.
DFD_HD bool general_area(const Job& job, int stream, Window* src, Scale* s, int* offset) {
    int size;
    if (stream == kFusionStream) {
        *src = whole(job.image);
        if (fusion_interpolation(job.image.width, job.image.height) != kInterArea) return false;
        size = kFusion;
        *offset = 0;
    } else if (stream == kFace) {
        *src = job_face_window(job);
        if (src->width <= 0 || src->height <= 0) return false;
        size = kFaceResize;
        *offset = (kFaceResize - kCrop) / 2;
    } else {
        return false;
    }
    if (src->width == size && src->height == size) return false;
    *s = resize_scale(src->width, src->height, size, size);
    int ix, iy;
    return s->x >= 1.0 && s->y >= 1.0 && !area_fast(*s, &ix, &iy);
}

// stream_pixel at (x, y) and (x, y + 1): a general area resize sums both cells in one walk
// (area_cell_sum_pair), and computes the window, scale factors and horizontal cell once.
DFD_HD void stream_pixel_pair(const Job& job, int stream, int x, int y, float v0[3], float v1[3]) {
    Window src;
    Scale s;
    int offset;
    if (!general_area(job, stream, &src, &s, &offset)) {
        stream_pixel(job, stream, x, y, v0);
        stream_pixel(job, stream, x, y + 1, v1);
        return;
    }
    float sum0[3], sum1[3];
    area_cell_sum_pair(src, area_cell(x + offset, src.width, s.x), area_cell(y + offset, src.height, s.y),
                       area_cell(y + 1 + offset, src.height, s.y), sum0, sum1);
    for (int c = 0; c < 3; ++c) {
        v0[c] = normalised_area_sum(sum0[c], c);
        v1[c] = normalised_area_sum(sum1[c], c);
    }
}

// ---- the fused kernel's work decomposition ---------------------------------------------------
// Task t of a batch is two vertically adjacent output pixels (all three channels), rows y and
// y + 1 (y even), of one stream of one image: a pair shares the per-pixel setup and the source row
// between its two cells (about 11 % faster than single pixels on an H100 for 32 phone photos,
// benchmarks/gpu_preprocess_tuning.md). An image's tasks are laid out global (252x126 pairs),
// face (252x126), fusion (224x112), so neighbouring tasks write neighbouring addresses of the same
// CHW plane.
constexpr long long kCropPixels = (long long)kCrop * kCrop;
constexpr long long kFusionPixels = (long long)kFusion * kFusion;
static_assert(kCrop % 2 == 0 && kFusion % 2 == 0, "tasks are pairs of output rows");
constexpr long long kCropTasks = kCropPixels / 2;
constexpr long long kTasksPerImage = 2 * kCropTasks + kFusionPixels / 2;

// store(stream, index into that stream's [N,3,side,side] tensor, value) for the three channels of
// output pixel (x, y) of image n.
template <typename Store>
DFD_HD void store_pixel(int n, int stream, int x, int y, const float v[3], Store store) {
    const int side = stream_side(stream);
    const long long plane = (long long)side * side;
    const long long base = (long long)n * 3 * plane + (long long)y * side + x;
    for (int c = 0; c < 3; ++c) store(stream, base + c * plane, v[c]);
}

// Runs task `t` (0 <= t < batch * kTasksPerImage): store(stream, index into that stream's
// [N,3,side,side] tensor, value) six times.
template <typename Store>
DFD_HD void preprocess_task(const Job* jobs, long long t, Store store) {
    // 32-bit division by a constant (the launcher keeps batch * kTasksPerImage below 2^32)
    const unsigned task = (unsigned)t;
    const int n = (int)(task / (unsigned)kTasksPerImage);
    unsigned r = task - (unsigned)n * (unsigned)kTasksPerImage;
    int stream = kGlobal;
    if (r >= kCropTasks) {
        r -= kCropTasks;
        stream = kFace;
        if (r >= kCropTasks) {
            r -= kCropTasks;
            stream = kFusionStream;
        }
    }
    const int side = stream_side(stream);
    const int pair = (int)r;  // < kCropTasks: 32-bit division by a constant, not a 64-bit one by a variable
    const int row_pair = stream == kFusionStream ? pair / kFusion : pair / kCrop;
    const int x = pair - row_pair * side, y = 2 * row_pair;
    float v0[3], v1[3];
    stream_pixel_pair(jobs[n], stream, x, y, v0, v1);
    store_pixel(n, stream, x, y, v0, store);
    store_pixel(n, stream, x, y + 1, v1, store);
}

// ---- the row decomposition (the faster one for 12-MP photos, benchmarks/gpu_preprocess_tuning.md) -
// Block b of a launch of batch * kRowsPerImage blocks of kRowThreads threads computes one output row
// of one stream of one image (an image's rows laid out global, face, fusion), thread x its pixel x.
// Where the row is an INTER_AREA downscale with fractional cells (the fusion stream of any photo
// over 224 high, most face windows), the block computes the row's plan once, its warps copy the
// source rows the output row reads into shared memory with 16-byte copies (asynchronous on sm_80+),
// all at once where they fit, else in double-buffered chunks (the next chunk in flight while the
// threads sum the current one), and its threads sum their cells from there: each source byte is
// read from device memory once per output row instead of once per thread through scattered byte
// loads. Every other row runs the per-pixel functions above.
//
// The schedule is written once, against an executor that the CUDA kernel implements with real
// threads and __syncthreads and the host test with a loop over thread indices, so the host build
// runs the very schedule (buffer offsets, row order, which thread copies what) the GPU runs.
constexpr int kRowsPerImage = 2 * kCrop + kFusion;
constexpr int kRowThreads = 256;                // >= the widest output row (252)
constexpr int kStageBytes = 36864;              // the block's shared buffer of staged source rows
constexpr int kStageSlots = 64;                 // staged rows at a time, at most (both halves)

// What a block's threads share, computed once by its first thread.
struct RowPlan {
    int image, stream, y;  // the output row
    bool staged;           // the area-staged schedule below; otherwise the per-pixel functions
    Window src;            // the window the stream resizes, in image coordinates
    Scale scale;
    AreaCell cy;           // the output row's vertical cell, in window rows
    int offset;            // resize coordinate of output pixel 0 (the face stream's 252 center crop)
    int first_row, rows;   // window rows first_row .. first_row + rows - 1, each staged in turn
    int col0, col1;        // image columns [col0, col1) of a staged row: the window's part inside
    int stride;            // bytes from one staged row to the next (the row, its phase, 16-aligned)
    int chunk_rows;        // rows staged per chunk: all of them, or half the buffer's worth
    int chunks;            // chunks of the row: ceil(rows / chunk_rows)
};

DFD_HD RowPlan row_plan(const Job* jobs, int block) {
    RowPlan p;
    p.image = block / kRowsPerImage;
    int r = block - p.image * kRowsPerImage;
    p.stream = r < kCrop ? kGlobal : r < 2 * kCrop ? kFace : kFusionStream;
    p.y = r - (p.stream == kGlobal ? 0 : p.stream == kFace ? kCrop : 2 * kCrop);
    p.staged = false;
    if (!general_area(jobs[p.image], p.stream, &p.src, &p.scale, &p.offset)) return p;
    p.col0 = imax(p.src.x0, 0);
    p.col1 = imin(p.src.x0 + p.src.width, p.src.image.width);
    if (p.col1 <= p.col0) return p;
    p.cy = area_cell(p.y + p.offset, p.src.height, p.scale.y);
    p.first_row = cell_begin(p.cy);
    p.rows = cell_end(p.cy) - p.first_row;
    p.stride = (3 * (p.col1 - p.col0) + 15 + 15) / 16 * 16;
    const int capacity = kStageBytes / p.stride;
    if (p.rows > capacity && capacity < 2) return p;  // rows too wide to double-buffer
    p.chunk_rows = p.rows <= imin(capacity, kStageSlots) ? p.rows : imin(capacity, kStageSlots) / 2;
    p.chunks = (p.rows + p.chunk_rows - 1) / p.chunk_rows;
    p.staged = true;
    return p;
}

// 16 bytes, both addresses 16-byte aligned: an asynchronous global -> shared copy on sm_80 and newer
// (cp.async, completed by stage_wait), a 16-byte load and store before that and on the host.
DFD_HD void copy16(unsigned char* dst, const unsigned char* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned shared = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared), "l"(src) : "memory");
#elif defined(__CUDA_ARCH__)
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#else
    for (int i = 0; i < 16; ++i) dst[i] = src[i];
#endif
}

DFD_HD int stage_phase(const unsigned char* src) { return (int)((unsigned long long)src & 15u); }

// One thread's part of copying bytes [src, src + n) to stage + (src % 16), so that 16-byte-aligned
// source chunks land on 16-byte-aligned shared addresses: the aligned middle in 16-byte copies,
// the unaligned ends (< 16 bytes each) byte by byte. Only bytes of the row are read.
DFD_HD void stage_row(int lane, unsigned char* stage, const unsigned char* src, int n) {
    unsigned char* dst = stage + stage_phase(src);
    const int head = imin((16 - stage_phase(src)) & 15, n);
    const int chunks = (n - head) / 16;
    const int tail = head + 16 * chunks;
    if (lane < head) dst[lane] = src[lane];
    if (lane >= 16 && lane - 16 < n - tail) dst[tail + lane - 16] = src[tail + lane - 16];
    for (int i = lane; i < chunks; i += 32) copy16(dst + head + 16 * i, src + head + 16 * i);
}

// Waits for this thread's asynchronous copies; the block barrier after it publishes them to all.
DFD_HD void stage_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// A thread's state across the staged schedule's barriers.
struct RowThread {
    AreaCell cx;     // its horizontal cell, in window columns
    int column;      // byte offset of its cell's pixel cx.first in a staged row, or -1 where the cell
                     // leaves the staged columns (it then reads through area_row)
    float sum[3];
};

// The block's work. Exec provides: leader(f) (f on one thread), each(f) (f(x, RowThread&) on every
// thread), sync() (block barrier), plan() (the shared RowPlan), stage() (the shared buffer of
// kStageBytes) and slots() (kStageSlots shared ints). Between barriers, each() may run the threads
// in any order.
template <typename Exec, typename Store>
DFD_HD void preprocess_row_block(Exec& ex, const Job* jobs, int block, Store store) {
    RowPlan& plan = ex.plan();
    ex.leader([&] { plan = row_plan(jobs, block); });
    ex.sync();
    const int side = stream_side(plan.stream);
    if (!plan.staged) {
        ex.each([&](int x, RowThread&) {
            if (x >= side) return;
            float v[3];
            stream_pixel(jobs[plan.image], plan.stream, x, plan.y, v);
            store_pixel(plan.image, plan.stream, x, plan.y, v, store);
        });
        return;
    }
    const Window& src = plan.src;
    // source pointer of window row (first_row + k) in the staged columns; null where the row is
    // outside the image (black: area_row reads no memory there)
    auto row_bytes = [&](int k) -> const unsigned char* {
        const int iy = src.y0 + plan.first_row + k;
        if (iy < 0 || iy >= src.image.height) return nullptr;
        return src.image.data + (long long)iy * src.image.pitch + 3LL * plan.col0;
    };
    // Chunk j is rows j * chunk_rows ..., staged in half (j & 1) of the buffer (all of it when one
    // chunk holds every row); row r of the chunk is at slot (j & 1) * chunk_rows + r, its first byte
    // at buffer offset ex.slots()[slot] (-1: a row outside the image). Warp w stages rows w, w + 8, ...
    auto chunk_count = [&](int j) { return imin(plan.chunk_rows, plan.rows - j * plan.chunk_rows); };
    auto stage_chunk = [&](int x, int j) {
        for (int r = x / 32; r < chunk_count(j); r += kRowThreads / 32) {
            const int slot = (j & 1) * plan.chunk_rows + r;
            const unsigned char* bytes = row_bytes(j * plan.chunk_rows + r);
            if (bytes != nullptr) stage_row(x % 32, ex.stage() + slot * plan.stride, bytes, 3 * (plan.col1 - plan.col0));
            if (x % 32 == 0) ex.slots()[slot] = bytes != nullptr ? slot * plan.stride + stage_phase(bytes) : -1;
        }
    };
    ex.each([&](int x, RowThread& t) {
        stage_chunk(x, 0);
        t.sum[0] = t.sum[1] = t.sum[2] = 0.f;
        if (x >= side) return;
        t.cx = area_cell(x + plan.offset, src.width, plan.scale.x);
        const bool inside = src.x0 + cell_begin(t.cx) >= plan.col0 && src.x0 + cell_end(t.cx) <= plan.col1;
        t.column = inside ? 3 * (src.x0 + t.cx.first - plan.col0) : -1;
    });
    for (int j = 0; j < plan.chunks; ++j) {
        ex.each([&](int, RowThread&) { stage_wait(); });
        ex.sync();  // chunk j is staged; every thread is done with chunk j - 1, in the other half
        ex.each([&](int x, RowThread& t) {
            if (j + 1 < plan.chunks) stage_chunk(x, j + 1);
            if (x >= side) return;
            const int first = j * plan.chunk_rows, count = chunk_count(j), half = (j & 1) * plan.chunk_rows;
            int r = 0;
            // rows two at a time while both are staged and the cell lies in the staged columns
            for (; t.column >= 0 && r + 1 < count; r += 2) {
                const int at0 = ex.slots()[half + r], at1 = ex.slots()[half + r + 1];
                if (at0 < 0 || at1 < 0) break;
                float two[6];
                area_spans<2>(ex.stage() + at0 + t.column, at1 - at0, t.cx, src.image.order, two);
                const int sy = plan.first_row + first + r;
                area_accumulate(t.sum, two, cell_weight(plan.cy, sy));
                area_accumulate(t.sum, two + 3, cell_weight(plan.cy, sy + 1));
            }
            for (; r < count; ++r) {
                const int sy = plan.first_row + first + r, at = ex.slots()[half + r];
                float buf[3];
                if (t.column >= 0 && at >= 0)
                    area_span(ex.stage() + at + t.column, t.cx, src.image.order, buf);
                else
                    area_row(src, t.cx, sy, buf);
                area_accumulate(t.sum, buf, cell_weight(plan.cy, sy));
            }
        });
    }
    ex.each([&](int x, RowThread& t) {
        if (x >= side) return;
        float v[3];
        for (int c = 0; c < 3; ++c) v[c] = normalised_area_sum(t.sum[c], c);
        store_pixel(plan.image, plan.stream, x, plan.y, v, store);
    });
}

// ---- the column decomposition -----------------------------------------------------------------
// Block b of a launch of batch * kColumnBlocksPerImage blocks of kColumnThreads threads computes
// kColumnRows consecutive output rows of one stream of one image; thread x walks output column x
// down them. Where the stream is a general area resize, the block's first warp computes the window,
// the scale factors and the rows' vertical cells once for the block, each thread computes its
// horizontal cell once for its kColumnRows pixels, and the source row that two consecutive cells
// share is summed once (carried from one cell to the next). Each sum still adds its rows in
// ascending order, as OpenCV does, so every pixel equals area_cell_sum of its cell bit for bit.
// Blocks are numbered heaviest first: every image's fusion groups, then face, then global.
constexpr int kColumnRows = 7;
static_assert(kCrop % kColumnRows == 0 && kFusion % kColumnRows == 0, "row groups tile every stream");
constexpr int kCropGroups = kCrop / kColumnRows;
constexpr int kFusionGroups = kFusion / kColumnRows;
constexpr int kColumnBlocksPerImage = 2 * kCropGroups + kFusionGroups;
constexpr int kColumnThreads = 256;  // >= the widest output row (252)

// A block's output rows: y0 .. y0 + kColumnRows - 1 of one stream of one image.
struct ColumnGroup {
    int image, stream, y0;
};
DFD_HD ColumnGroup column_group(int block, int batch) {
    ColumnGroup g;
    int r = block;
    if (r < batch * kFusionGroups) {
        g.stream = kFusionStream;
        g.image = r / kFusionGroups;
        g.y0 = (r - g.image * kFusionGroups) * kColumnRows;
        return g;
    }
    r -= batch * kFusionGroups;
    g.stream = kFace;
    if (r >= batch * kCropGroups) {
        r -= batch * kCropGroups;
        g.stream = kGlobal;
    }
    g.image = r / kCropGroups;
    g.y0 = (r - g.image * kCropGroups) * kColumnRows;
    return g;
}

// What a block's threads share, computed by its first warp.
struct ColumnPlan {
    bool general;  // general_area: the walk below; otherwise stream_pixel per pixel
    Window src;
    Scale scale;
    int offset;
    AreaCell cy[kColumnRows];  // the vertical cells of the block's output rows
};

// The block's work. Exec provides plan() (the shared ColumnPlan), sync() (block barrier) and each(f)
// (f(x) on every thread x; between barriers the threads may run in any order).
template <typename Exec, typename Store>
DFD_HD void preprocess_column_block(Exec& ex, const Job* jobs, int batch, int block, Store store) {
    const ColumnGroup g = column_group(block, batch);
    const Job& job = jobs[g.image];
    ColumnPlan& plan = ex.plan();
    ex.each([&](int x) {
        if (x >= kColumnRows) return;
        Window src;
        Scale s;
        int offset;
        const bool general = general_area(job, g.stream, &src, &s, &offset);
        if (general) plan.cy[x] = area_cell(g.y0 + x + offset, src.height, s.y);
        if (x == 0) {
            plan.general = general;
            plan.src = src;
            plan.scale = s;
            plan.offset = offset;
        }
    });
    ex.sync();
    const int side = stream_side(g.stream);
    ex.each([&](int x) {
        if (x >= side) return;
        float v[3];
        if (!plan.general) {
            for (int k = 0; k < kColumnRows; ++k) {
                stream_pixel(job, g.stream, x, g.y0 + k, v);
                store_pixel(g.image, g.stream, x, g.y0 + k, v, store);
            }
            return;
        }
        const Window src = plan.src;
        const AreaCell cx = area_cell(x + plan.offset, src.width, plan.scale.x);
        float carry[3] = {0.f, 0.f, 0.f};  // the sums of window row carry_row
        int carry_row = -1;
        for (int k = 0; k < kColumnRows; ++k) {
            const AreaCell cy = plan.cy[k];
            int begin = cell_begin(cy);
            const int end = cell_end(cy);
            float sum[3] = {0.f, 0.f, 0.f};
            if (begin == carry_row && begin < end) {
                area_accumulate(sum, carry, cell_weight(cy, begin));
                ++begin;
            }
            if (begin < end) {
                area_walk(src, cx, begin, end, [&](int sy, const float* buf) {
                    area_accumulate(sum, buf, cell_weight(cy, sy));
                    if (sy == end - 1)
                        for (int c = 0; c < 3; ++c) carry[c] = buf[c];
                });
                carry_row = end - 1;
            }
            for (int c = 0; c < 3; ++c) v[c] = normalised_area_sum(sum[c], c);
            store_pixel(g.image, g.stream, x, g.y0 + k, v, store);
        }
    });
}

}  // namespace dfd

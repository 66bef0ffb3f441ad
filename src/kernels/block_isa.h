/*
 * One instruction-set level of the block loops. Each bn_block_<level>.c defines
 * BN_LEVEL and includes this file; setup.py compiles it with that level's -m flags.
 * The template is instantiated for each storage type of the dtype table (dtypes.h),
 * and the instantiations are collected into a table indexed by bn_dtype.
 */
#include "block_ops.h"

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* For the loops that take `terms` or `relu_mask`: each caller passes a constant, and
 * only inlining specialises the loop for it. Left to itself GCC called output_row
 * out of line from output_rows once the file grew, and that copy tested terms per
 * element: ten times the instructions (8 x 16 x 16 x 16 float32 eval 3 -> 13 us).
 * Inlined chunks also keep the coefficients in registers (an out-of-line float16
 * chunk reloaded them and ran vzeroupper for every 32 elements). */
#if defined(__GNUC__)
#define BN_INLINE static inline __attribute__((always_inline))
#else
#define BN_INLINE static inline
#endif

/* Independent accumulators per reduction: enough to hide the latency of a vector
 * add on every level (4 AVX-512 registers of 8 doubles, 8 of AVX2, 16 of SSE2). */
#define BN_LANES 32
#define BN_LINE_BYTES 64

/* Writes one 64-byte-aligned cache line without reading it into the cache first.
 * In 32-byte halves on AVX-512 too: the line was just stored to the stack, as two
 * halves where float16 chunks are narrowed, and a 64-byte load of two younger
 * 32-byte stores cannot be forwarded from them (it waits for them to reach the
 * cache). */
static inline void bn_stream_line(void *dst, const void *line)
{
#if defined(__AVX__)
    for (int k = 0; k < 2; k++)
        _mm256_stream_si256((__m256i *)dst + k, _mm256_loadu_si256((const __m256i *)line + k));
#elif defined(__SSE2__)
    for (int k = 0; k < 4; k++)
        _mm_stream_si128((__m128i *)dst + k, _mm_loadu_si128((const __m128i *)line + k));
#else
    memcpy(dst, line, BN_LINE_BYTES);
#endif
}

/* Streaming stores are weakly ordered: fence them before other threads read. */
static inline void bn_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* Pairwise sum of the lane accumulators in a fixed order: halve until one is left. */
static inline double bn_combine_lanes(const double acc[BN_LANES])
{
    double part[BN_LANES];
    for (int j = 0; j < BN_LANES; j++)
        part[j] = acc[j];
    for (int width = BN_LANES / 2; width >= 1; width /= 2)
        for (int j = 0; j < width; j++)
            part[j] = part[j] + part[j + width];
    return part[0];
}

#define BN_PASTE3(a, b, c) a##_##b##_##c
#define BN_EXPAND3(a, b, c) BN_PASTE3(a, b, c)

/* Conversions between elements and the type loops compute in (see
 * block_template.h). float and double compute in their own type: chunks are the
 * elements themselves, read and written in place. */
#define BN_SAME_WIDE_CHUNK(v, p) const BN_COMPUTE *v = (p)
#define BN_SAME_OUT_CHUNK(o, p) BN_COMPUTE *o = (p)
#define BN_SAME_OUT_CHUNK_STORE(o, p) (void)(o)
#define BN_CAST_WIDEN1(p) ((BN_COMPUTE) * (p))
#define BN_CAST_NARROW1(p, v) (*(p) = (BN_T)(v))

#define BN_T float
#define BN_NAME(op) BN_EXPAND3(op, f32, BN_LEVEL)
#define BN_COMPUTE float
#define BN_WIDE_CHUNK BN_SAME_WIDE_CHUNK
#define BN_OUT_CHUNK BN_SAME_OUT_CHUNK
#define BN_OUT_CHUNK_STORE BN_SAME_OUT_CHUNK_STORE
#define BN_WIDEN1 BN_CAST_WIDEN1
#define BN_NARROW1 BN_CAST_NARROW1
#define BN_ZERO_BELOW 0.0f
#define BN_CHUNKED_TAILS 1
#define BN_LANE_SUMS 1
#include "block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_COMPUTE
#undef BN_ZERO_BELOW
#define BN_OPS_f32 BN_OPS_ENTRY(f32, 1)

#define BN_T double
#define BN_NAME(op) BN_EXPAND3(op, f64, BN_LEVEL)
#define BN_COMPUTE double
#define BN_ZERO_BELOW 0.0
#undef BN_CHUNKED_TAILS
#define BN_CHUNKED_TAILS 0
#undef BN_LANE_SUMS
#define BN_LANE_SUMS 0
#include "block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_COMPUTE
#undef BN_ZERO_BELOW
#undef BN_CHUNKED_TAILS
#undef BN_LANE_SUMS
#undef BN_WIDE_CHUNK
#undef BN_OUT_CHUNK
#undef BN_OUT_CHUNK_STORE
#undef BN_WIDEN1
#undef BN_NARROW1
#define BN_OPS_f64 BN_OPS_ENTRY(f64, 0)

#if BN_HAVE_FLOAT16
/* float16 is computed in float (it has 11 bits). Conversions use F16C where the
 * level has it: the vector instructions for chunks, the scalar ones for single
 * elements (GCC would otherwise convert float16 to double through a library call). */
static inline void bn_f16_widen_lanes(float *d, const _Float16 *s)
{
#if defined(__AVX512F__)
    for (int k = 0; k < BN_LANES; k += 16)
        _mm512_storeu_ps(d + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + k))));
#elif defined(__F16C__)
    for (int k = 0; k < BN_LANES; k += 8)
        _mm256_storeu_ps(d + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + k))));
#else
    for (int j = 0; j < BN_LANES; j++)
        d[j] = (float)s[j];
#endif
}

static inline void bn_f16_narrow_lanes(_Float16 *d, const float *s)
{
#if defined(__AVX512F__)
    for (int k = 0; k < BN_LANES; k += 16)
        _mm256_storeu_si256((__m256i *)(d + k), _mm512_cvtps_ph(_mm512_loadu_ps(s + k), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
    for (int k = 0; k < BN_LANES; k += 8)
        _mm_storeu_si128((__m128i *)(d + k), _mm256_cvtps_ph(_mm256_loadu_ps(s + k), _MM_FROUND_TO_NEAREST_INT));
#else
    for (int j = 0; j < BN_LANES; j++)
        d[j] = (_Float16)s[j];
#endif
}

static inline float bn_f16_widen1(const _Float16 *p)
{
#if defined(__F16C__)
    unsigned short bits;
    memcpy(&bits, p, sizeof bits);
    return _cvtsh_ss(bits);
#else
    return (float)*p;
#endif
}

static inline void bn_f16_narrow1(_Float16 *p, float v)
{
#if defined(__F16C__)
    const unsigned short bits = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
    memcpy(p, &bits, sizeof bits);
#else
    *p = (_Float16)v;
#endif
}

#define BN_T bn_float16
#define BN_NAME(op) BN_EXPAND3(op, f16, BN_LEVEL)
#define BN_COMPUTE float
#define BN_WIDE_CHUNK(v, p)                                                             \
    float v##_converted[BN_LANES];                                                      \
    bn_f16_widen_lanes(v##_converted, p);                                               \
    const float *v = v##_converted
#define BN_OUT_CHUNK(o, p) float o[BN_LANES]
#define BN_OUT_CHUNK_STORE(o, p) bn_f16_narrow_lanes(p, o)
#define BN_WIDEN1 bn_f16_widen1
#define BN_NARROW1 bn_f16_narrow1
/* a float rounds to a positive float16 only above half the smallest subnormal, 2^-24
 * (exactly half rounds to even: 0) */
#define BN_ZERO_BELOW 0x1p-25f
#define BN_CHUNKED_TAILS 1
#define BN_LANE_SUMS 1
#include "block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_COMPUTE
#undef BN_WIDE_CHUNK
#undef BN_OUT_CHUNK
#undef BN_OUT_CHUNK_STORE
#undef BN_WIDEN1
#undef BN_NARROW1
#undef BN_ZERO_BELOW
#undef BN_CHUNKED_TAILS
#undef BN_LANE_SUMS
#define BN_OPS_f16 BN_OPS_ENTRY(f16, 1)
#else
#define BN_OPS_f16 {0} /* no loops: bn_dtype_supported(BN_FLOAT16) is 0 */
#endif

/* The table entry of the loops instantiated with `suffix`; `lanes`: whether they
 * have float-lane sums (BN_LANE_SUMS). */
#define BN_LANE_ENTRY_0(op, suffix) NULL
#define BN_LANE_ENTRY_1(op, suffix) BN_EXPAND3(op, suffix, BN_LEVEL)
#define BN_LANE_ENTRY(lanes, op, suffix) BN_LANE_ENTRY_##lanes(op, suffix)
#define BN_OPS_ENTRY(suffix, lanes)                                                                \
    {                                                                                              \
        .sum = BN_EXPAND3(sum, suffix, BN_LEVEL), .grad_sums = BN_EXPAND3(grad_sums, suffix, BN_LEVEL), \
        .shifted_sums = BN_EXPAND3(shifted_sums, suffix, BN_LEVEL),                                \
        .lane_shifted_sums = BN_LANE_ENTRY(lanes, lane_shifted_sums, suffix),                      \
        .lane_grad_sums = BN_LANE_ENTRY(lanes, lane_grad_sums, suffix),                            \
        .output = BN_EXPAND3(output, suffix, BN_LEVEL), .output_rows = BN_EXPAND3(output_rows, suffix, BN_LEVEL), \
        .cl_sum = BN_EXPAND3(cl_sum, suffix, BN_LEVEL),                                            \
        .cl_grad_sums = BN_EXPAND3(cl_grad_sums, suffix, BN_LEVEL),                                \
        .cl_shifted_sums = BN_EXPAND3(cl_shifted_sums, suffix, BN_LEVEL),                          \
        .cl_lane_shifted_sums = BN_LANE_ENTRY(lanes, cl_lane_shifted_sums, suffix),                \
        .cl_lane_grad_sums = BN_LANE_ENTRY(lanes, cl_lane_grad_sums, suffix),                      \
        .cl_set_coefs = BN_EXPAND3(cl_set_coefs, suffix, BN_LEVEL),                                \
        .cl_output = BN_EXPAND3(cl_output, suffix, BN_LEVEL),                                      \
    }

#define BN_PASTE_TABLE(level) bn_ops_##level
#define BN_TABLE_NAME(level) BN_PASTE_TABLE(level)

/* One entry per row of the dtype table: BN_OPS_<SUFFIX>, defined above by the row's
 * instantiation (a row without one does not compile). */
#define BN_OPS_ROW(ID, NAME, SUFFIX, STORAGE, PARAM) [ID] = BN_OPS_##SUFFIX,
const bn_block_ops BN_TABLE_NAME(BN_LEVEL)[BN_DTYPE_COUNT] = {BN_FOR_EACH_DTYPE(BN_OPS_ROW)};
#undef BN_OPS_ROW

/*
 * One instruction-set level of the block loops. Each bn_block_<level>.c defines
 * BN_LEVEL and includes this file; setup.py compiles it with that level's -m flags.
 * The template is instantiated for float and double and collected into a table.
 */
#include "bn_block_ops.h"

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* Independent accumulators per reduction: enough to hide the latency of a vector
 * add on every level (4 AVX-512 registers of 8 doubles, 8 of AVX2, 16 of SSE2). */
#define BN_LANES 32
#define BN_LINE_BYTES 64

/* Writes one 64-byte-aligned cache line without reading it into the cache first. */
static inline void bn_stream_line(void *dst, const void *line)
{
#if defined(__AVX512F__)
    _mm512_stream_si512(dst, _mm512_loadu_si512(line));
#elif defined(__AVX__)
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

#define BN_T float
#define BN_NAME(op) BN_EXPAND3(op, f32, BN_LEVEL)
#define BN_WORK float
#define BN_FROM_WORK(v) (v)
#define BN_TO_DOUBLE(v) ((double)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_WORK
#undef BN_FROM_WORK
#undef BN_TO_DOUBLE

#define BN_T double
#define BN_NAME(op) BN_EXPAND3(op, f64, BN_LEVEL)
#define BN_WORK double
#define BN_FROM_WORK(v) (v)
#define BN_TO_DOUBLE(v) ((double)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_WORK
#undef BN_FROM_WORK
#undef BN_TO_DOUBLE

#if defined(__FLT16_MAX__)
/* Computed in float (float16 has 11 bits; F16C converts from float). */
#define BN_T _Float16
#define BN_NAME(op) BN_EXPAND3(op, f16, BN_LEVEL)
#define BN_WORK float
#define BN_FROM_WORK(v) ((_Float16)(v))
#define BN_TO_DOUBLE(v) ((double)(float)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_WORK
#undef BN_FROM_WORK
#undef BN_TO_DOUBLE
#define BN_F16_ENTRY BN_TABLE_ENTRY(f16)
#else
#define BN_F16_ENTRY {0}
#endif

#define BN_TABLE_ENTRY(suffix)                                                                  \
    {                                                                                           \
        .sum = BN_EXPAND3(sum, suffix, BN_LEVEL), \
        .grad_sums = BN_EXPAND3(grad_sums, suffix, BN_LEVEL),                                   \
        .shifted_sums = BN_EXPAND3(shifted_sums, suffix, BN_LEVEL),                             \
        .output = BN_EXPAND3(output, suffix, BN_LEVEL), .cl_sum = BN_EXPAND3(cl_sum, suffix, BN_LEVEL), \
        .cl_grad_sums = BN_EXPAND3(cl_grad_sums, suffix, BN_LEVEL),                             \
        .cl_shifted_sums = BN_EXPAND3(cl_shifted_sums, suffix, BN_LEVEL),                             \
        .cl_output = BN_EXPAND3(cl_output, suffix, BN_LEVEL),                                   \
    }

#define BN_PASTE_TABLE(level) bn_ops_##level
#define BN_TABLE_NAME(level) BN_PASTE_TABLE(level)

const bn_block_ops BN_TABLE_NAME(BN_LEVEL)[BN_DTYPE_COUNT] = {BN_TABLE_ENTRY(f32), BN_TABLE_ENTRY(f64), BN_F16_ENTRY};

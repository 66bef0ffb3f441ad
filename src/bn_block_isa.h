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

#define BN_LANES 16
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

/* Pairwise sum of the lane accumulators in a fixed order. */
static inline double bn_combine_lanes(const double acc[BN_LANES])
{
    double half[BN_LANES / 2];
    for (int j = 0; j < BN_LANES / 2; j++)
        half[j] = acc[j] + acc[j + BN_LANES / 2];
    double quarter[BN_LANES / 4];
    for (int j = 0; j < BN_LANES / 4; j++)
        quarter[j] = half[j] + half[j + BN_LANES / 4];
    return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

#define BN_PASTE3(a, b, c) a##_##b##_##c
#define BN_EXPAND3(a, b, c) BN_PASTE3(a, b, c)

#define BN_T float
#define BN_NAME(op) BN_EXPAND3(op, f32, BN_LEVEL)
#define BN_FROM_DOUBLE(v) ((float)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_FROM_DOUBLE

#define BN_T double
#define BN_NAME(op) BN_EXPAND3(op, f64, BN_LEVEL)
#define BN_FROM_DOUBLE(v) ((double)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_FROM_DOUBLE

#if defined(__FLT16_MAX__)
/* Rounded through float: F16C converts only from float, and every level must
 * round the same way (at most one float16 ulp from the double result). */
#define BN_T _Float16
#define BN_NAME(op) BN_EXPAND3(op, f16, BN_LEVEL)
#define BN_FROM_DOUBLE(v) ((_Float16)(float)(v))
#include "bn_block_template.h"
#undef BN_T
#undef BN_NAME
#undef BN_FROM_DOUBLE
#define BN_F16_ENTRY BN_TABLE_ENTRY(f16)
#else
#define BN_F16_ENTRY {0}
#endif

#define BN_TABLE_ENTRY(suffix)                                                          \
    {                                                                                   \
        BN_EXPAND3(sum, suffix, BN_LEVEL), BN_EXPAND3(centered, suffix, BN_LEVEL),      \
            BN_EXPAND3(grad_sums, suffix, BN_LEVEL), BN_EXPAND3(output, suffix, BN_LEVEL), \
            BN_EXPAND3(cl_sum, suffix, BN_LEVEL), BN_EXPAND3(cl_centered, suffix, BN_LEVEL), \
            BN_EXPAND3(cl_grad_sums, suffix, BN_LEVEL), BN_EXPAND3(cl_output, suffix, BN_LEVEL) \
    }

#define BN_PASTE_TABLE(level) bn_ops_##level
#define BN_TABLE_NAME(level) BN_PASTE_TABLE(level)

const bn_block_ops BN_TABLE_NAME(BN_LEVEL)[BN_DTYPE_COUNT] = {BN_TABLE_ENTRY(f32), BN_TABLE_ENTRY(f64), BN_F16_ENTRY};

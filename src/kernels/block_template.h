/*
 * Type-generic block loops, included once per element type by block_isa.h:
 *   BN_T                    the element type (float, double, _Float16)
 *   BN_NAME(op)             op decorated with the type and the level
 *   BN_COMPUTE              the type output loops compute in (float for float32 and
 *                           float16 data, double for float64)
 *   BN_WIDE_CHUNK(v, p)     declares `const BN_COMPUTE *v`: the BN_LANES elements at p
 *                           as BN_COMPUTE (p itself where BN_T is BN_COMPUTE, else a
 *                           converted copy)
 *   BN_OUT_CHUNK(o, p)      declares `BN_COMPUTE *o` for BN_LANES results bound for p;
 *   BN_OUT_CHUNK_STORE(o, p)  then rounds them into p (nothing to do where BN_T is
 *                           BN_COMPUTE: o was p)
 *   BN_WIDEN1(p), BN_NARROW1(p, v)   one element to BN_COMPUTE and back
 *   BN_ZERO_BELOW           the largest BN_COMPUTE value that rounds to an element <= 0
 *   BN_CHUNKED_TAILS        1 to end rows with an overlapping chunk (see sum_chunk)
 * Every loop converts whole chunks of BN_LANES elements, then the rest one by one:
 * the chunk conversions are where float16 uses F16C's vector instructions (a
 * compiler left to itself converts float16 one element at a time, or calls a
 * library routine for float16 to double).
 *
 * This file holds the per-element formulas; the loops over blocks are in
 * block_channel_major.h (NCHW) and block_channels_last.h, included at its end.
 *
 * The file is compiled once per x86-64 level with different -m flags. The source
 * fixes every summation order (BN_LANES independent accumulators, element i of a
 * row going to accumulator i % BN_LANES, or to its lane in an overlapping last
 * chunk, then a fixed pairwise combine; channels-last rows in order; float-lane
 * sums folding each accumulator into its double total after a fixed number of
 * values, BN_STRETCH) and the build disables FMA contraction, so every level
 * produces the same bits. Functions taking a `terms` or `relu_mask` flag are
 * written once and instantiated for each flag value by constant arguments to
 * inline helpers.
 */

/* ---- per-element formulas, on BN_COMPUTE values ----
 *
 * Output loops compute in BN_COMPUTE: a float32 output needs no double arithmetic if
 * x - mean keeps the precision of the double mean, which the split
 * mean = mean_hi + mean_lo gives ((x - mean_hi) is exact near the mean, and mean_lo
 * restores what rounding mean to BN_COMPUTE lost). */
typedef struct {
    BN_COMPUTE mean_hi, mean_lo, k_dy, k_xmu, k_const, relu_scale, relu_shift;
} BN_NAME(compute_coefs);

static inline BN_NAME(compute_coefs) BN_NAME(to_compute)(const bn_coefs *k)
{
    const BN_COMPUTE mean_hi = (BN_COMPUTE)k->mean;
    return (BN_NAME(compute_coefs)){mean_hi,           (BN_COMPUTE)(k->mean - (double)mean_hi), (BN_COMPUTE)k->k_dy,
                                 (BN_COMPUTE)k->k_xmu, (BN_COMPUTE)k->k_const,                  (BN_COMPUTE)k->relu_scale,
                                 (BN_COMPUTE)k->relu_shift};
}

BN_INLINE BN_COMPUTE BN_NAME(centered)(BN_COMPUTE x, const BN_NAME(compute_coefs) *w)
{
    return (x - w->mean_hi) - w->mean_lo;
}

/* Whether the forward's ReLU let this element through (its output > 0, PyTorch's
 * threshold_backward): the forward's pre-activation recomputed with the forward's
 * operations in the forward's order, instead of keeping the output. */
BN_INLINE int BN_NAME(relu_passes)(BN_COMPUTE centered, const BN_NAME(compute_coefs) *w)
{
    return w->relu_shift + w->relu_scale * centered > BN_ZERO_BELOW;
}

/* dy, or 0 where the forward's ReLU output was 0. */
BN_INLINE BN_COMPUTE BN_NAME(masked_dy)(BN_COMPUTE x, BN_COMPUTE dy, int relu_mask, const BN_NAME(compute_coefs) *w)
{
    return relu_mask && !BN_NAME(relu_passes)(BN_NAME(centered)(x, w), w) ? 0 : dy;
}

/* One output value; see bn_coefs. Terms left out are not read, so a NaN in x
 * cannot reach an eval-mode gradient, which does not depend on x. */
BN_INLINE BN_COMPUTE BN_NAME(output_value)(BN_COMPUTE x, BN_COMPUTE dy, int terms, const BN_NAME(compute_coefs) *w)
{
    BN_COMPUTE centered = 0;
    if (terms & (BN_USE_X | BN_RELU_MASK))
        centered = BN_NAME(centered)(x, w);
    BN_COMPUTE value = w->k_const;
    if (terms & BN_USE_X)
        value = w->k_const + w->k_xmu * centered;
    if (terms & BN_USE_DY) {
        const int passes = !(terms & BN_RELU_MASK) || BN_NAME(relu_passes)(centered, w);
        value += passes ? w->k_dy * dy : (BN_COMPUTE)0;
    }
    if ((terms & BN_RELU_CLAMP) && value < 0)
        value = 0;
    return value;
}

/* Coefficient vectors: BN_CL_COEFS vectors over channels of BN_COMPUTE values, in
 * compute_coefs' order, converted once per channel as to_compute converts them.
 * Channels-last loops and NCHW rows in memory order (output_rows) read them. A loop
 * per vector, over contiguous channels (one call per channel cost 12 ns a channel in
 * store-forwarding stalls: half of a 2048-channel eval forward's fixed cost). */
static void BN_NAME(cl_set_coefs)(const double *mean, const double *coef, int64_t c0, int64_t c1, int64_t channels,
                                  void *cl_coefsv)
{
    BN_COMPUTE *mean_hi = cl_coefsv, *mean_lo = mean_hi + channels;
    for (int64_t c = c0; c < c1; c++) {
        mean_hi[c] = (BN_COMPUTE)mean[c];
        mean_lo[c] = (BN_COMPUTE)(mean[c] - (double)mean_hi[c]);
    }
    for (int k = 2; k < BN_CL_COEFS; k++)
        for (int64_t c = c0; c < c1; c++)
            mean_hi[k * channels + c] = (BN_COMPUTE)coef[(k - 2) * channels + c];
}

static inline BN_NAME(compute_coefs) BN_NAME(cl_coefs_at)(const BN_COMPUTE *cl_coefs, int64_t channels, int64_t c)
{
    return (BN_NAME(compute_coefs)){cl_coefs[c],
                                 cl_coefs[channels + c],
                                 cl_coefs[2 * channels + c],
                                 cl_coefs[3 * channels + c],
                                 cl_coefs[4 * channels + c],
                                 cl_coefs[5 * channels + c],
                                 cl_coefs[6 * channels + c]};
}

/* Values each accumulator of the float-lane sums (lane_shifted_sums, and their
 * channels-last variants) adds before it is folded into double. A block's M2 that
 * fused.c keeps is within (1 + BN_SHIFT_SPREAD)(3K + 4) u of the exact one, u = 2^-24,
 * and a channel's variance within 169 u = 1.0e-5 at K = 4 (docs/numerics.md): the
 * accuracy design.md asks of the variance; K = 8 would double it. */
#define BN_STRETCH 4

#include "block_channel_major.h"
#include "block_channels_last.h"

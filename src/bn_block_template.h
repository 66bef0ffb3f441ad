/*
 * Type-generic block loops, included once per element type by bn_block_isa.h:
 *   BN_T               the element type (float, double, _Float16)
 *   BN_NAME(op)        op decorated with the type and the level
 *   BN_WORK            the type output loops compute in
 *   BN_FROM_WORK(v)    the rounding of a BN_WORK result to BN_T
 *   BN_TO_DOUBLE(v)    a BN_T value as a double (exact; through float for float16,
 *                      which hardware converts only to float)
 * The file is compiled once per x86-64 level with different -m flags. The source
 * fixes every summation order (BN_LANES independent accumulators, element i of a
 * row going to accumulator i % BN_LANES, then a fixed pairwise combine; channels-
 * last rows in order) and the build disables FMA contraction, so every level
 * produces the same bits. Functions taking a `terms` or `relu_mask` flag are
 * written once and instantiated for each flag value by constant arguments to
 * inline helpers.
 */

static double BN_NAME(sum)(const void *xv, int64_t rows, int64_t width, int64_t stride)
{
    const BN_T *x = xv;
    double acc[BN_LANES] = {0};
    double tail = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES)
            for (int j = 0; j < BN_LANES; j++)
                acc[j] += BN_TO_DOUBLE(row[i + j]);
        for (; i < width; i++)
            tail += BN_TO_DOUBLE(row[i]);
    }
    return bn_combine_lanes(acc) + tail;
}

/* Output loops compute in BN_WORK (float for float32 and float16 data, double for
 * float64): a float32 output needs no double arithmetic if x - mean keeps the
 * precision of the double mean, which the split mean = mean_hi + mean_lo gives
 * ((x - mean_hi) is exact near the mean, and mean_lo restores what rounding mean
 * to BN_WORK lost). */
typedef struct {
    BN_WORK mean_hi, mean_lo, k_dy, k_xmu, k_const, relu_scale, relu_shift;
} BN_NAME(work_coefs);

static inline BN_NAME(work_coefs) BN_NAME(to_work)(double mean, double k_dy, double k_xmu, double k_const,
                                                   double relu_scale, double relu_shift)
{
    const BN_WORK mean_hi = (BN_WORK)mean;
    return (BN_NAME(work_coefs)){mean_hi,         (BN_WORK)(mean - (double)mean_hi), (BN_WORK)k_dy,
                                 (BN_WORK)k_xmu,  (BN_WORK)k_const,                  (BN_WORK)relu_scale,
                                 (BN_WORK)relu_shift};
}

/* Whether the forward's ReLU let this element through (output > 0, PyTorch's
 * threshold_backward): its output recomputed with the forward's operations in the
 * forward's order, instead of keeping the output. */
static inline int BN_NAME(relu_passes)(BN_WORK centered, const BN_NAME(work_coefs) *w)
{
    return BN_FROM_WORK(w->relu_shift + w->relu_scale * centered) > 0;
}

static inline BN_WORK BN_NAME(centered_at)(const BN_T *x, int64_t i, const BN_NAME(work_coefs) *w)
{
    return ((BN_WORK)x[i] - w->mean_hi) - w->mean_lo;
}

/* dy, or 0 where the forward's ReLU output was 0. */
static inline double BN_NAME(masked_dy)(const BN_T *x, const BN_T *dy, int64_t i, int relu_mask,
                                        const BN_NAME(work_coefs) *w)
{
    if (relu_mask && !BN_NAME(relu_passes)(BN_NAME(centered_at)(x, i, w), w))
        return 0.0;
    return BN_TO_DOUBLE(dy[i]);
}

static inline void BN_NAME(grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t width,
                                           int64_t stride, const bn_coefs *k, int relu_mask, double *sum_dy,
                                           double *sum_dy_xmu)
{
    double acc_g[BN_LANES] = {0}, acc_gx[BN_LANES] = {0};
    double tail_g = 0.0, tail_gx = 0.0;
    const double mean = k->mean;
    const BN_NAME(work_coefs) w = BN_NAME(to_work)(k->mean, k->k_dy, k->k_xmu, k->k_const, k->relu_scale,
                                                   k->relu_shift);
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES) {
            double g[BN_LANES];
            for (int j = 0; j < BN_LANES; j++)
                g[j] = BN_NAME(masked_dy)(xr, gr, i + j, relu_mask, &w);
            for (int j = 0; j < BN_LANES; j++)
                acc_g[j] += g[j];
            for (int j = 0; j < BN_LANES; j++)
                acc_gx[j] += g[j] * (BN_TO_DOUBLE(xr[i + j]) - mean);
        }
        for (; i < width; i++) {
            double g = BN_NAME(masked_dy)(xr, gr, i, relu_mask, &w);
            tail_g += g;
            tail_gx += g * (BN_TO_DOUBLE(xr[i]) - mean);
        }
    }
    *sum_dy = bn_combine_lanes(acc_g) + tail_g;
    *sum_dy_xmu = bn_combine_lanes(acc_gx) + tail_gx;
}

static void BN_NAME(grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                               const bn_coefs *k, int relu_mask, double *sum_dy, double *sum_dy_xmu)
{
    if (relu_mask)
        BN_NAME(grad_sums_rows)(x, dy, rows, width, stride, k, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(grad_sums_rows)(x, dy, rows, width, stride, k, 0, sum_dy, sum_dy_xmu);
}

/* One output element; see bn_coefs. Terms left out are not read, so a NaN in x
 * cannot reach an eval-mode gradient, which does not depend on x. The ReLU mask
 * recomputes the forward's output (relu_passes). */
static inline BN_T BN_NAME(output_at)(const BN_T *x, const BN_T *dy, int64_t i, int terms,
                                      const BN_NAME(work_coefs) *w)
{
    BN_WORK centered = 0;
    if (terms & (BN_USE_X | BN_RELU_MASK))
        centered = BN_NAME(centered_at)(x, i, w);
    BN_WORK value = w->k_const;
    if (terms & BN_USE_X)
        value = w->k_const + w->k_xmu * centered;
    if (terms & BN_USE_DY) {
        const int passes = !(terms & BN_RELU_MASK) || BN_NAME(relu_passes)(centered, w);
        value += passes ? w->k_dy * (BN_WORK)dy[i] : (BN_WORK)0;
    }
    if ((terms & BN_RELU_CLAMP) && value < 0)
        value = 0;
    return BN_FROM_WORK(value);
}

/* One output row in three parts: elements up to the first cache-line boundary,
 * whole lines (streamed past the cache when `stream` is set: an output much larger
 * than the cache would otherwise evict the input still to be read, and cost a read
 * of each line before it is written), and the rest. */
static inline void BN_NAME(output_row)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t width,
                                       const BN_NAME(work_coefs) *w, int terms, int stream)
{
    enum { PER_LINE = BN_LINE_BYTES / sizeof(BN_T) };
    int64_t i = 0;
    if (stream) {
        for (; i < width && (uintptr_t)(out + i) % BN_LINE_BYTES != 0; i++)
            out[i] = BN_NAME(output_at)(x, dy, i, terms, w);
        for (; i + PER_LINE <= width; i += PER_LINE) {
            BN_T line[PER_LINE];
            for (int l = 0; l < PER_LINE; l++)
                line[l] = BN_NAME(output_at)(x, dy, i + l, terms, w);
            bn_stream_line(out + i, line);
        }
    }
    for (; i < width; i++)
        out[i] = BN_NAME(output_at)(x, dy, i, terms, w);
}

static void BN_NAME(output)(const void *xv, const void *dyv, void *outv, int64_t rows, int64_t width,
                            int64_t stride, const bn_coefs *k, int terms, int stream)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *out = outv;
    const BN_NAME(work_coefs) w =
        BN_NAME(to_work)(k->mean, k->k_dy, k->k_xmu, k->k_const, k->relu_scale, k->relu_shift);
    /* the switch outside the row loop: rows can be as short as a few elements */
    switch (terms) {
#define BN_ROW_CASE(t)                                                                          \
    case t:                                                                                     \
        for (int64_t r = 0; r < rows; r++)                                                      \
            BN_NAME(output_row)(x + r * stride, dy ? dy + r * stride : NULL, out + r * stride, width, &w, t, \
                                stream);                                                        \
        break;
        BN_FOR_EACH_TERMS(BN_ROW_CASE)
#undef BN_ROW_CASE
    }
    if (stream)
        bn_stream_fence();
}

/* Sums of d = x - shift and of d^2. For float64 data (BN_WORK double) with the
 * block's mean as the shift these are the centred sums of a two-pass variance. For
 * float32 and float16 data, in one pass: d is formed in float (exact for x within a
 * factor 2 of the shift, a value of the block) and accumulated in double, where d^2
 * is exact. With a value of the block
 * as the shift, the sum of squares exceeds the centred one at most (n + 1)-fold, so
 * forming the variance from them loses at most log2(n + 1) of double's 53 bits. */
static void BN_NAME(shifted_sums)(const void *xv, int64_t rows, int64_t width, int64_t stride, double shift,
                                  double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    const BN_WORK k = (BN_WORK)shift;
    double acc_d[BN_LANES] = {0}, acc_d2[BN_LANES] = {0};
    double tail_d = 0.0, tail_d2 = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES) {
            double d[BN_LANES];
            for (int j = 0; j < BN_LANES; j++)
                d[j] = (double)((BN_WORK)row[i + j] - k);
            for (int j = 0; j < BN_LANES; j++)
                acc_d[j] += d[j];
            for (int j = 0; j < BN_LANES; j++)
                acc_d2[j] += d[j] * d[j];
        }
        for (; i < width; i++) {
            double d = (double)((BN_WORK)row[i] - k);
            tail_d += d;
            tail_d2 += d * d;
        }
    }
    *sum_d = bn_combine_lanes(acc_d) + tail_d;
    *sum_d2 = bn_combine_lanes(acc_d2) + tail_d2;
}

/* ---- channels-last blocks: `rows` rows of `channels` contiguous values, one per
 * channel. Each channel accumulates its rows in order, so vectorising across
 * channels changes no result. */

static void BN_NAME(cl_sum)(const void *xv, int64_t rows, int64_t channels, double *sum)
{
    const BN_T *x = xv;
    for (int64_t c = 0; c < channels; c++)
        sum[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * channels;
        for (int64_t c = 0; c < channels; c++)
            sum[c] += BN_TO_DOUBLE(row[c]);
    }
}

/* Channels-last sums of d = x - shift[c] and of d^2 (see shifted_sums). */
static void BN_NAME(cl_shifted_sums)(const void *xv, int64_t rows, int64_t channels, const double *shift,
                                     double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    for (int64_t c = 0; c < channels; c++)
        sum_d[c] = sum_d2[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * channels;
        for (int64_t c = 0; c < channels; c++) {
            double d = (double)((BN_WORK)row[c] - (BN_WORK)shift[c]);
            sum_d[c] += d;
            sum_d2[c] += d * d;
        }
    }
}

static inline void BN_NAME(cl_grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                              const bn_coef_vectors *k, int relu_mask, double *sum_dy,
                                              double *sum_dy_xmu)
{
    for (int64_t c = 0; c < channels; c++)
        sum_dy[c] = sum_dy_xmu[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * channels, *gr = dy + r * channels;
        for (int64_t c = 0; c < channels; c++) {
            const BN_NAME(work_coefs) w = BN_NAME(to_work)(k->mean[c], k->k_dy[c], k->k_xmu[c], k->k_const[c],
                                                           k->relu_scale[c], k->relu_shift[c]);
            double g = BN_NAME(masked_dy)(xr, gr, c, relu_mask, &w);
            sum_dy[c] += g;
            sum_dy_xmu[c] += g * (BN_TO_DOUBLE(xr[c]) - k->mean[c]);
        }
    }
}

static void BN_NAME(cl_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels,
                                  const bn_coef_vectors *k, int relu_mask, double *sum_dy, double *sum_dy_xmu)
{
    if (relu_mask)
        BN_NAME(cl_grad_sums_rows)(x, dy, rows, channels, k, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(cl_grad_sums_rows)(x, dy, rows, channels, k, 0, sum_dy, sum_dy_xmu);
}

static inline void BN_NAME(cl_output_rows)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t rows,
                                           int64_t channels, const bn_coef_vectors *k, int terms)
{
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * channels;
        for (int64_t c = 0; c < channels; c++) {
            const BN_NAME(work_coefs) w = BN_NAME(to_work)(k->mean[c], k->k_dy[c], k->k_xmu[c], k->k_const[c],
                                                           k->relu_scale[c], k->relu_shift[c]);
            out[at + c] = BN_NAME(output_at)(x + at, dy ? dy + at : NULL, c, terms, &w);
        }
    }
}

static void BN_NAME(cl_output)(const void *x, const void *dy, void *out, int64_t rows, int64_t channels,
                               const bn_coef_vectors *k, int terms)
{
    switch (terms) {
#define BN_CL_CASE(t)                                                   \
    case t:                                                             \
        BN_NAME(cl_output_rows)(x, dy, out, rows, channels, k, t);      \
        break;
        BN_FOR_EACH_TERMS(BN_CL_CASE)
#undef BN_CL_CASE
    }
}


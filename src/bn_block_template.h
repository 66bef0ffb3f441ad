/*
 * Type-generic block loops, included once per element type by bn_block_isa.h:
 *   BN_T               the element type (float, double, _Float16)
 *   BN_NAME(op)        op decorated with the type and the level
 *   BN_FROM_DOUBLE(v)  the rounding of a double result to BN_T
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
                acc[j] += (double)row[i + j];
        for (; i < width; i++)
            tail += (double)row[i];
    }
    return bn_combine_lanes(acc) + tail;
}

static void BN_NAME(centered)(const void *xv, int64_t rows, int64_t width, int64_t stride, double mean,
                              double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    double acc_d[BN_LANES] = {0}, acc_d2[BN_LANES] = {0};
    double tail_d = 0.0, tail_d2 = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES)
            for (int j = 0; j < BN_LANES; j++) {
                double d = (double)row[i + j] - mean;
                acc_d[j] += d;
                acc_d2[j] += d * d;
            }
        for (; i < width; i++) {
            double d = (double)row[i] - mean;
            tail_d += d;
            tail_d2 += d * d;
        }
    }
    *sum_d = bn_combine_lanes(acc_d) + tail_d;
    *sum_d2 = bn_combine_lanes(acc_d2) + tail_d2;
}

/* dy, or 0 where the forward's ReLU output was 0 (PyTorch's threshold_backward:
 * the gradient passes where the output is > 0). The pre-activation is recomputed
 * from x and rounded as the forward rounded it, instead of keeping the output. */
static inline double BN_NAME(masked_dy)(const BN_T *x, const BN_T *dy, int64_t i, int relu_mask, double mean,
                                        double relu_scale, double relu_shift)
{
    if (relu_mask && !(BN_FROM_DOUBLE(relu_scale * ((double)x[i] - mean) + relu_shift) > 0))
        return 0.0;
    return (double)dy[i];
}

static inline void BN_NAME(grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t width,
                                           int64_t stride, const bn_coefs *k, int relu_mask, double *sum_dy,
                                           double *sum_dy_xmu)
{
    double acc_g[BN_LANES] = {0}, acc_gx[BN_LANES] = {0};
    double tail_g = 0.0, tail_gx = 0.0;
    const double mean = k->mean;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES)
            for (int j = 0; j < BN_LANES; j++) {
                double g = BN_NAME(masked_dy)(xr, gr, i + j, relu_mask, mean, k->relu_scale, k->relu_shift);
                acc_g[j] += g;
                acc_gx[j] += g * ((double)xr[i + j] - mean);
            }
        for (; i < width; i++) {
            double g = BN_NAME(masked_dy)(xr, gr, i, relu_mask, mean, k->relu_scale, k->relu_shift);
            tail_g += g;
            tail_gx += g * ((double)xr[i] - mean);
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
 * cannot reach an eval-mode gradient, which does not depend on x. */
static inline BN_T BN_NAME(output_at)(const BN_T *x, const BN_T *dy, int64_t i, int terms, double mean,
                                      double k_dy, double k_xmu, double k_const, double relu_scale,
                                      double relu_shift)
{
    double value = k_const;
    if (terms & BN_USE_X)
        value += k_xmu * ((double)x[i] - mean);
    if (terms & BN_USE_DY)
        value += k_dy * BN_NAME(masked_dy)(x, dy, i, terms & BN_RELU_MASK, mean, relu_scale, relu_shift);
    if ((terms & BN_RELU_CLAMP) && value < 0.0)
        value = 0.0;
    return BN_FROM_DOUBLE(value);
}

#define BN_OUTPUT_AT(i) \
    BN_NAME(output_at)(x, dy, (i), terms, k->mean, k->k_dy, k->k_xmu, k->k_const, k->relu_scale, k->relu_shift)

/* One output row in three parts: elements up to the first cache-line boundary,
 * whole lines (streamed past the cache when `stream` is set: an output much larger
 * than the cache would otherwise evict the input still to be read, and cost a read
 * of each line before it is written), and the rest. */
static inline void BN_NAME(output_row)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t width,
                                       const bn_coefs *k, int terms, int stream)
{
    enum { PER_LINE = BN_LINE_BYTES / sizeof(BN_T) };
    int64_t i = 0;
    if (stream) {
        for (; i < width && (uintptr_t)(out + i) % BN_LINE_BYTES != 0; i++)
            out[i] = BN_OUTPUT_AT(i);
        for (; i + PER_LINE <= width; i += PER_LINE) {
            BN_T line[PER_LINE];
            for (int l = 0; l < PER_LINE; l++)
                line[l] = BN_OUTPUT_AT(i + l);
            bn_stream_line(out + i, line);
        }
    }
    for (; i < width; i++)
        out[i] = BN_OUTPUT_AT(i);
}

static void BN_NAME(output)(const void *xv, const void *dyv, void *outv, int64_t rows, int64_t width,
                            int64_t stride, const bn_coefs *k, int terms, int stream)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *out = outv;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * stride;
        const BN_T *dy_row = dy ? dy + at : NULL;
        switch (terms) {
#define BN_ROW_CASE(t)                                                          \
    case t:                                                                     \
        BN_NAME(output_row)(x + at, dy_row, out + at, width, k, t, stream);     \
        break;
            BN_FOR_EACH_TERMS(BN_ROW_CASE)
#undef BN_ROW_CASE
        }
    }
    if (stream)
        bn_stream_fence();
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
            sum[c] += (double)row[c];
    }
}

static void BN_NAME(cl_centered)(const void *xv, int64_t rows, int64_t channels, const double *mean,
                                 double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    for (int64_t c = 0; c < channels; c++)
        sum_d[c] = sum_d2[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * channels;
        for (int64_t c = 0; c < channels; c++) {
            double d = (double)row[c] - mean[c];
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
            double g = BN_NAME(masked_dy)(xr, gr, c, relu_mask, k->mean[c], k->relu_scale[c], k->relu_shift[c]);
            sum_dy[c] += g;
            sum_dy_xmu[c] += g * ((double)xr[c] - k->mean[c]);
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
        for (int64_t c = 0; c < channels; c++)
            out[at + c] = BN_NAME(output_at)(x + at, dy ? dy + at : NULL, c, terms, k->mean[c], k->k_dy[c],
                                             k->k_xmu[c], k->k_const[c], k->relu_scale[c], k->relu_shift[c]);
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

#undef BN_OUTPUT_AT

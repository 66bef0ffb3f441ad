/*
 * Type-generic block loops, included once per element type by bn_block_isa.h:
 *   BN_T     the element type (float or double)
 *   BN_NAME  a macro that decorates a function name with the type and level
 *   BN_FROM_DOUBLE(v)  the rounding of a double result to BN_T
 * The file is compiled once per x86-64 level with different -m flags; the source
 * fixes the summation order (BN_LANES independent accumulators, element i of a row
 * going to accumulator i % BN_LANES, then a fixed pairwise combine), and the build
 * disables FMA contraction, so every level produces the same bits.
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

static void BN_NAME(centered)(const void *xv, int64_t rows, int64_t width, int64_t stride,
                              double mean, double *sum_d, double *sum_d2)
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

static void BN_NAME(grad_sums)(const void *xv, const void *dyv, int64_t rows, int64_t width,
                               int64_t stride, double mean, double *sum_dy, double *sum_dy_xmu)
{
    const BN_T *x = xv, *dy = dyv;
    double acc_g[BN_LANES] = {0}, acc_gx[BN_LANES] = {0};
    double tail_g = 0.0, tail_gx = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
        int64_t i = 0;
        for (; i + BN_LANES <= width; i += BN_LANES)
            for (int j = 0; j < BN_LANES; j++) {
                double g = (double)gr[i + j];
                acc_g[j] += g;
                acc_gx[j] += g * ((double)xr[i + j] - mean);
            }
        for (; i < width; i++) {
            double g = (double)gr[i];
            tail_g += g;
            tail_gx += g * ((double)xr[i] - mean);
        }
    }
    *sum_dy = bn_combine_lanes(acc_g) + tail_g;
    *sum_dy_xmu = bn_combine_lanes(acc_gx) + tail_gx;
}

/* out = k_xmu * (x - mean) + k_const + k_dy * dy, without the x term when with_x is
 * 0 (so that a NaN in x cannot leak into an eval-mode gradient, which does not
 * depend on x) and without the dy term when with_dy is 0. The forward transform
 * (k_xmu = gamma * invstd, k_const = beta) and the input gradient share it. */
static inline BN_T BN_NAME(linear_at)(const BN_T *x, const BN_T *dy, int64_t i, int with_x, int with_dy,
                                      double mean, double k_dy, double k_xmu, double k_const)
{
    double value = k_const;
    if (with_x)
        value += k_xmu * ((double)x[i] - mean);
    if (with_dy)
        value += k_dy * (double)dy[i];
    return BN_FROM_DOUBLE(value);
}

/* One output row in three parts: elements up to the first cache-line boundary,
 * whole lines (streamed past the cache when `stream` is set: an output much larger
 * than the cache would otherwise evict the input still to be read, and cost a read
 * of each line before it is written), and the rest. */
static inline void BN_NAME(linear_row)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t width, int with_x,
                                       int with_dy, int stream, double mean, double k_dy, double k_xmu,
                                       double k_const)
{
    enum { PER_LINE = BN_LINE_BYTES / sizeof(BN_T) };
    int64_t i = 0;
    if (stream) {
        for (; i < width && (uintptr_t)(out + i) % BN_LINE_BYTES != 0; i++)
            out[i] = BN_NAME(linear_at)(x, dy, i, with_x, with_dy, mean, k_dy, k_xmu, k_const);
        for (; i + PER_LINE <= width; i += PER_LINE) {
            BN_T line[PER_LINE];
            for (int l = 0; l < PER_LINE; l++)
                line[l] = BN_NAME(linear_at)(x, dy, i + l, with_x, with_dy, mean, k_dy, k_xmu, k_const);
            bn_stream_line(out + i, line);
        }
    }
    for (; i < width; i++)
        out[i] = BN_NAME(linear_at)(x, dy, i, with_x, with_dy, mean, k_dy, k_xmu, k_const);
}

/* x or dy may be NULL: that term is left out. Each combination is its own
 * inlined loop. */
static void BN_NAME(linear)(const void *xv, const void *dyv, void *outv, int64_t rows, int64_t width,
                            int64_t stride, double mean, double k_dy, double k_xmu, double k_const, int stream)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *out = outv;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * stride;
        if (x != NULL && dy != NULL)
            BN_NAME(linear_row)(x + at, dy + at, out + at, width, 1, 1, stream, mean, k_dy, k_xmu, k_const);
        else if (x != NULL)
            BN_NAME(linear_row)(x + at, NULL, out + at, width, 1, 0, stream, mean, k_dy, k_xmu, k_const);
        else
            BN_NAME(linear_row)(NULL, dy + at, out + at, width, 0, 1, stream, mean, k_dy, k_xmu, k_const);
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

static void BN_NAME(cl_grad_sums)(const void *xv, const void *dyv, int64_t rows, int64_t channels,
                                  const double *mean, double *sum_dy, double *sum_dy_xmu)
{
    const BN_T *x = xv, *dy = dyv;
    for (int64_t c = 0; c < channels; c++)
        sum_dy[c] = sum_dy_xmu[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * channels, *gr = dy + r * channels;
        for (int64_t c = 0; c < channels; c++) {
            double g = (double)gr[c];
            sum_dy[c] += g;
            sum_dy_xmu[c] += g * ((double)xr[c] - mean[c]);
        }
    }
}

static void BN_NAME(cl_linear)(const void *xv, const void *dyv, void *outv, int64_t rows, int64_t channels,
                               const double *mean, const double *k_dy, const double *k_xmu,
                               const double *k_const)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *out = outv;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * channels;
        if (x != NULL && dy != NULL)
            for (int64_t c = 0; c < channels; c++)
                out[at + c] = BN_FROM_DOUBLE(k_const[c] + k_xmu[c] * ((double)x[at + c] - mean[c]) +
                                             k_dy[c] * (double)dy[at + c]);
        else if (x != NULL)
            for (int64_t c = 0; c < channels; c++)
                out[at + c] = BN_FROM_DOUBLE(k_const[c] + k_xmu[c] * ((double)x[at + c] - mean[c]));
        else
            for (int64_t c = 0; c < channels; c++)
                out[at + c] = BN_FROM_DOUBLE(k_const[c] + k_dy[c] * (double)dy[at + c]);
    }
}

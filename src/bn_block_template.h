/*
 * Type-generic block loops, included once per element type by bn_block_isa.h:
 *   BN_T     the element type (float or double)
 *   BN_NAME  a macro that decorates a function name with the type and level
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

static void BN_NAME(affine)(const void *xv, void *yv, int64_t rows, int64_t width, int64_t stride,
                            double mean, double scale, double shift)
{
    const BN_T *x = xv;
    BN_T *y = yv;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride;
        BN_T *yr = y + r * stride;
        for (int64_t i = 0; i < width; i++)
            yr[i] = (BN_T)(((double)xr[i] - mean) * scale + shift);
    }
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

static void BN_NAME(grad_input)(const void *xv, const void *dyv, void *dxv, int64_t rows,
                                int64_t width, int64_t stride, double mean, double k_dy,
                                double k_xmu, double k_const)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *dx = dxv;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
        BN_T *dr = dx + r * stride;
        for (int64_t i = 0; i < width; i++)
            dr[i] = (BN_T)(k_dy * (double)gr[i] + k_xmu * ((double)xr[i] - mean) + k_const);
    }
}

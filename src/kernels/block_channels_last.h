/*
 * Channels-last block loops. Part of block_template.h, included by it with its
 * macros and per-element formulas defined.
 */

/* ---- channels-last blocks: `rows` rows of `channels` contiguous values, one per
 * channel. Each channel accumulates its rows in order, so vectorising across
 * channels changes no result. Output and gradient loops read their coefficients as
 * BN_COMPUTE vectors over channels (BN_CL_COEFS of them, in compute_coefs' order),
 * converted once per channel by cl_set_coefs. */

static void BN_NAME(cl_set_coefs)(const bn_coefs *k, int64_t c, int64_t channels, void *cl_coefsv)
{
    BN_COMPUTE *cl_coefs = cl_coefsv;
    const BN_NAME(compute_coefs) w = BN_NAME(to_compute)(k);
    const BN_COMPUTE values[BN_CL_COEFS] = {w.mean_hi, w.mean_lo, w.k_dy, w.k_xmu, w.k_const, w.relu_scale,
                                           w.relu_shift};
    for (int i = 0; i < BN_CL_COEFS; i++)
        cl_coefs[i * channels + c] = values[i];
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

static void BN_NAME(cl_sum)(const void *xv, int64_t rows, int64_t channels, double *sum)
{
    const BN_T *x = xv;
    for (int64_t c = 0; c < channels; c++)
        sum[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * channels;
        int64_t c = 0;
        for (; c + BN_LANES <= channels; c += BN_LANES) {
            BN_WIDE_CHUNK(v, row + c);
            for (int j = 0; j < BN_LANES; j++)
                sum[c + j] += (double)v[j];
        }
        for (; c < channels; c++)
            sum[c] += (double)BN_WIDEN1(row + c);
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
        int64_t c = 0;
        for (; c + BN_LANES <= channels; c += BN_LANES) {
            BN_WIDE_CHUNK(v, row + c);
            for (int j = 0; j < BN_LANES; j++) {
                const double d = (double)v[j] - shift[c + j];
                sum_d[c + j] += d;
                sum_d2[c + j] += d * d;
            }
        }
        for (; c < channels; c++) {
            const double d = (double)BN_WIDEN1(row + c) - shift[c];
            sum_d[c] += d;
            sum_d2[c] += d * d;
        }
    }
}

static inline void BN_NAME(cl_grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                              const double *mean, const BN_COMPUTE *cl_coefs, int relu_mask,
                                              double *sum_dy, double *sum_dy_xmu)
{
    for (int64_t c = 0; c < channels; c++)
        sum_dy[c] = sum_dy_xmu[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * channels, *gr = dy + r * channels;
        int64_t c = 0;
        for (; c + BN_LANES <= channels; c += BN_LANES) {
            BN_WIDE_CHUNK(xv, xr + c);
            BN_WIDE_CHUNK(dv, gr + c);
            for (int j = 0; j < BN_LANES; j++) {
                const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, c + j);
                const double g = (double)BN_NAME(masked_dy)(xv[j], dv[j], relu_mask, &w);
                sum_dy[c + j] += g;
                sum_dy_xmu[c + j] += g * ((double)xv[j] - mean[c + j]);
            }
        }
        for (; c < channels; c++) {
            const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, c);
            const BN_COMPUTE xi = BN_WIDEN1(xr + c);
            const double g = (double)BN_NAME(masked_dy)(xi, BN_WIDEN1(gr + c), relu_mask, &w);
            sum_dy[c] += g;
            sum_dy_xmu[c] += g * ((double)xi - mean[c]);
        }
    }
}

static void BN_NAME(cl_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels,
                                  const double *mean, const void *cl_coefs, int relu_mask, double *sum_dy,
                                  double *sum_dy_xmu)
{
    if (relu_mask)
        BN_NAME(cl_grad_sums_rows)(x, dy, rows, channels, mean, cl_coefs, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(cl_grad_sums_rows)(x, dy, rows, channels, mean, cl_coefs, 0, sum_dy, sum_dy_xmu);
}

#if BN_LANE_SUMS
/* Float-lane sums (see block_ops.h): for now the double loops. */
static void BN_NAME(cl_lane_shifted_sums)(const void *x, int64_t rows, int64_t channels, const double *shift,
                                          double *sum_d, double *sum_d2)
{
    BN_NAME(cl_shifted_sums)(x, rows, channels, shift, sum_d, sum_d2);
}

static void BN_NAME(cl_lane_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels,
                                       const double *mean, const void *cl_coefs, int relu_mask, double *sum_dy,
                                       double *sum_dy_xmu)
{
    BN_NAME(cl_grad_sums)(x, dy, rows, channels, mean, cl_coefs, relu_mask, sum_dy, sum_dy_xmu);
}
#endif

static inline void BN_NAME(cl_output_rows)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t rows,
                                           int64_t channels, const BN_COMPUTE *cl_coefs, int terms)
{
    for (int64_t r = 0; r < rows; r++) {
        const int64_t at = r * channels;
        int64_t c = 0;
        for (; c + BN_LANES <= channels; c += BN_LANES) {
            BN_WIDE_CHUNK(xv, x + at + c);
            BN_WIDE_CHUNK(dv, dy + at + c);
            BN_OUT_CHUNK(o, out + at + c);
            for (int j = 0; j < BN_LANES; j++) {
                const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, c + j);
                o[j] = BN_NAME(output_value)(xv[j], dv[j], terms, &w);
            }
            BN_OUT_CHUNK_STORE(o, out + at + c);
        }
        for (; c < channels; c++) {
            const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, c);
            BN_NAME(output_one)(x + at + c, dy + at + c, out + at + c, terms, &w);
        }
    }
}

static void BN_NAME(cl_output)(const void *xv, const void *dyv, void *out, int64_t rows, int64_t channels,
                               const void *cl_coefs, int terms, int stream)
{
    (void)stream; /* not yet: channels-last outputs are written through the cache */
    const BN_T *x = xv, *dy = dyv ? (const BN_T *)dyv : x; /* a NULL dy is never read */
    /* as in output: a combination missing from BN_FOR_EACH_TERMS is computed
     * unspecialised by the default */
    switch (terms) {
#define BN_CL_CASE(t)                                                   \
    case t:                                                             \
        BN_NAME(cl_output_rows)(x, dy, out, rows, channels, cl_coefs, t);   \
        break;
        BN_FOR_EACH_TERMS(BN_CL_CASE)
#undef BN_CL_CASE
    default:
        BN_NAME(cl_output_rows)(x, dy, out, rows, channels, cl_coefs, terms);
    }
}

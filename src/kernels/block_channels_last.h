/*
 * Channels-last block loops. Part of block_template.h, included by it with its
 * macros and per-element formulas defined.
 */

/* ---- channels-last blocks: `rows` rows of `channels` contiguous values, one per
 * channel. Each channel accumulates its rows in order, so vectorising across
 * channels changes no result. Output and gradient loops read their coefficients as
 * BN_COMPUTE vectors over channels (BN_CL_COEFS of them, in compute_coefs' order),
 * converted once per channel by cl_set_coefs. */

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

BN_INLINE void BN_NAME(cl_grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
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

/* ---- lanes over a block as a flat array ----
 *
 * A vector of BN_LANES positions starting at flat position i holds channels
 * (i + j) % channels. Its coefficients (lane j's coefficient k at at[k * stride + j])
 * are cl_coefs itself where those channels do not wrap past the row's end, else a
 * copy of the coefficients from channel `base` on, repeated (cl_wrap_coefs): then
 * every block, whatever its channel count, goes in whole vectors, and rows of fewer
 * than BN_LANES channels share a vector. */
typedef struct {
    const BN_COMPUTE *at;
    int64_t stride;
} BN_NAME(cl_window);

enum { BN_NAME(cl_wrap) = 2 * BN_LANES };

static inline int64_t BN_NAME(cl_wrap_base)(int64_t channels)
{
    return channels > BN_LANES ? channels - BN_LANES : 0;
}

static void BN_NAME(cl_wrap_coefs)(const BN_COMPUTE *cl_coefs, int64_t channels, BN_COMPUTE *wrap)
{
    for (int k = 0; k < BN_CL_COEFS; k++)
        for (int64_t q = 0, c = BN_NAME(cl_wrap_base)(channels); q < BN_NAME(cl_wrap); q++, c = c + 1 == channels ? 0 : c + 1)
            wrap[k * BN_NAME(cl_wrap) + q] = cl_coefs[k * channels + c];
}

/* the coefficients of the vector starting at channel o */
static inline BN_NAME(cl_window) BN_NAME(cl_window_at)(const BN_COMPUTE *cl_coefs, const BN_COMPUTE *wrap,
                                                       int64_t channels, int64_t o)
{
    if (o + BN_LANES <= channels)
        return (BN_NAME(cl_window)){cl_coefs + o, channels};
    return (BN_NAME(cl_window)){wrap + (o - BN_NAME(cl_wrap_base)(channels)), BN_NAME(cl_wrap)};
}

#if BN_LANE_SUMS
/* Float-lane sums (see block_ops.h): each channel's values accumulate in BN_COMPUTE
 * over stretches of BN_STRETCH rows, counted from the block's first row, and each
 * stretch is folded into the channel's double sum in order. A lane thus sums at most
 * BN_STRETCH values, and the order depends on the shape alone.
 *
 * The block is read in memory order. On the EPYC machines a core reading a few rows
 * at once, part of a row at a time (a tile of channels down a few rows, with its
 * accumulators in registers), got a third of the read rate of one forward stream,
 * software prefetch or not: 32 x 256 x 56 x 56 float32 statistics at 1 thread, 10
 * against 3.5 ms for the reads alone. */

/* the values lane j of a chunk reads: lane[k][j], k = mean_hi (or the shift),
 * mean_lo, relu_scale, relu_shift */
typedef struct {
    const BN_COMPUTE *lane[4];
} BN_NAME(cl_lanes);

/* Adds one chunk's terms to acc_a and acc_b; lanes outside [lo, hi) add zeros.
 * grad = 0: d = x - shift and d^2; grad = 1: dy (masked with relu_mask) and
 * dy * (x - mean) with (x - mean) as the output loops form it. */
BN_INLINE void BN_NAME(cl_lane_chunk)(const BN_T *x, const BN_T *dy, int lo, int hi, int grad, int relu_mask,
                                      const BN_NAME(cl_lanes) *l, BN_COMPUTE *acc_a, BN_COMPUTE *acc_b)
{
    BN_WIDE_CHUNK(xv, x);
    BN_COMPUTE a[BN_LANES], b[BN_LANES];
    if (grad) {
        BN_WIDE_CHUNK(dv, dy);
        for (int j = 0; j < BN_LANES; j++) {
            const BN_NAME(compute_coefs) w = {l->lane[0][j], l->lane[1][j], 0, 0, 0, l->lane[2][j], l->lane[3][j]};
            const BN_COMPUTE centered = BN_NAME(centered)(xv[j], &w);
            const int live = j >= lo && j < hi && (!relu_mask || BN_NAME(relu_passes)(centered, &w));
            a[j] = live ? dv[j] : (BN_COMPUTE)0;
            b[j] = live ? a[j] * centered : (BN_COMPUTE)0; /* 0, not 0 * inf */
        }
    } else {
        for (int j = 0; j < BN_LANES; j++)
            a[j] = j >= lo && j < hi ? xv[j] - l->lane[0][j] : (BN_COMPUTE)0;
        for (int j = 0; j < BN_LANES; j++)
            b[j] = a[j] * a[j];
    }
    for (int j = 0; j < BN_LANES; j++)
        acc_a[j] += a[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_b[j] += b[j];
}

/* ---- rows of at least BN_LANES channels ----
 * A row goes in whole chunks, the last aligned to the row's end with the lanes the
 * chunk before it counted left out. The stretch sums live in arrays over a strip of
 * channels (L1), whole rows where they fit. */
enum { BN_NAME(cl_strip) = 2048 };

/* One row of the strip of channels [lo, hi) into acc_a, acc_b, which start at
 * channel first = min(lo, hi - BN_LANES); l's vectors start at channel `first` too.
 * The lanes a chunk leaves out add +0, which changes no sum. */
BN_INLINE void BN_NAME(cl_lane_row)(const BN_T *x, const BN_T *dy, int64_t first, int64_t lo, int64_t hi, int grad,
                                    int relu_mask, const BN_NAME(cl_lanes) *l, BN_COMPUTE *acc_a, BN_COMPUTE *acc_b)
{
    int64_t c = lo;
    for (; c + BN_LANES <= hi; c += BN_LANES) {
        const BN_NAME(cl_lanes) at = {{l->lane[0] + (c - first), l->lane[1] + (c - first), l->lane[2] + (c - first),
                                      l->lane[3] + (c - first)}};
        BN_NAME(cl_lane_chunk)(x + c, dy + c, 0, BN_LANES, grad, relu_mask, &at, acc_a + (c - first),
                               acc_b + (c - first));
    }
    if (c < hi) {
        const int64_t t = hi - BN_LANES - first;
        const BN_NAME(cl_lanes) at = {{l->lane[0] + t, l->lane[1] + t, l->lane[2] + t, l->lane[3] + t}};
        BN_NAME(cl_lane_chunk)(x + hi - BN_LANES, dy + hi - BN_LANES, (int)(c - (hi - BN_LANES)), BN_LANES, grad,
                               relu_mask, &at, acc_a + t, acc_b + t);
    }
}

BN_INLINE void BN_NAME(cl_lane_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                          const double *shift, const BN_COMPUTE *cl_coefs, int grad, int relu_mask,
                                          double *sum_a, double *sum_b)
{
    enum { SPAN = BN_NAME(cl_strip) + BN_LANES };
    BN_COMPUTE acc_a[SPAN], acc_b[SPAN], shifts[SPAN];
    for (int64_t lo = 0; lo < channels; lo += BN_NAME(cl_strip)) {
        const int64_t hi = channels - lo < BN_NAME(cl_strip) ? channels : lo + BN_NAME(cl_strip);
        const int64_t first = hi - lo < BN_LANES ? hi - BN_LANES : lo, span = hi - first;
        BN_NAME(cl_lanes) l = {{shifts, shifts, shifts, shifts}};
        if (grad) {
            static const int used[4] = {0, 1, 5, 6}; /* mean_hi, mean_lo, relu_scale, relu_shift */
            for (int k = 0; k < 4; k++)
                l.lane[k] = cl_coefs + used[k] * channels + first;
        } else {
            /* shift is float-rounded already (fused.c): the conversion is exact */
            for (int64_t i = 0; i < span; i++)
                shifts[i] = (BN_COMPUTE)shift[first + i];
        }
        for (int64_t c = lo; c < hi; c++)
            sum_a[c] = sum_b[c] = 0.0;
        for (int64_t i = 0; i < span; i++)
            acc_a[i] = acc_b[i] = 0;
        for (int64_t r0 = 0; r0 < rows; r0 += BN_STRETCH) {
            const int64_t r1 = rows - r0 < BN_STRETCH ? rows : r0 + BN_STRETCH;
            for (int64_t r = r0; r < r1; r++)
                BN_NAME(cl_lane_row)(x + r * channels, dy + r * channels, first, lo, hi, grad, relu_mask, &l, acc_a,
                                     acc_b);
            /* the folds restart the stretch sums (lanes below lo only ever add zeros) */
            for (int64_t i = lo - first; i < span; i++) {
                sum_a[first + i] += (double)acc_a[i];
                acc_a[i] = 0;
            }
            for (int64_t i = lo - first; i < span; i++) {
                sum_b[first + i] += (double)acc_b[i];
                acc_b[i] = 0;
            }
        }
    }
}

/* ---- rows of fewer than BN_LANES channels ----
 * Rows go in groups of R = BN_LANES / channels rows, a group in one chunk whose lanes
 * beyond the group are left out (lane j holds channel j % channels); a chunk's
 * accumulators stay in registers over a stretch of BN_STRETCH groups. Reading past
 * the block's end (the last group) goes through a zero-padded copy. */

/* the sums of one chunk over BN_STRETCH groups `group` elements apart, all within the
 * block */
BN_INLINE void BN_NAME(cl_lane_stretch)(const BN_T *x, const BN_T *dy, int64_t group, int grad, int relu_mask,
                                        const BN_NAME(cl_lanes) *l, BN_COMPUTE *out_a, BN_COMPUTE *out_b)
{
    BN_COMPUTE a[BN_LANES] = {0}, b[BN_LANES] = {0};
    for (int g = 0; g < BN_STRETCH; g++)
        BN_NAME(cl_lane_chunk)(x + g * group, dy + g * group, 0, BN_LANES, grad, relu_mask, l, a, b);
    memcpy(out_a, a, sizeof a);
    memcpy(out_b, b, sizeof b);
}

/* the same for groups g0..g1 that are fewer or reach past the block's n elements */
static void BN_NAME(cl_lane_stretch_end)(const BN_T *x, const BN_T *dy, int64_t n, int64_t group, int64_t g0,
                                         int64_t g1, int grad, int relu_mask, const BN_NAME(cl_lanes) *l,
                                         BN_COMPUTE *out_a, BN_COMPUTE *out_b)
{
    for (int j = 0; j < BN_LANES; j++)
        out_a[j] = out_b[j] = 0;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t at = g * group;
        if (at + BN_LANES <= n) {
            BN_NAME(cl_lane_chunk)(x + at, dy + at, 0, BN_LANES, grad, relu_mask, l, out_a, out_b);
        } else {
            BN_T pad_x[BN_LANES] = {0}, pad_dy[BN_LANES] = {0};
            memcpy(pad_x, x + at, (size_t)(n - at) * sizeof(BN_T));
            if (grad)
                memcpy(pad_dy, dy + at, (size_t)(n - at) * sizeof(BN_T));
            BN_NAME(cl_lane_chunk)(pad_x, pad_dy, 0, (int)(n - at), grad, relu_mask, l, out_a, out_b);
        }
    }
}

BN_INLINE void BN_NAME(cl_lane_sums_short)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                           const double *shift, const BN_COMPUTE *cl_coefs, int grad, int relu_mask,
                                           double *sum_a, double *sum_b)
{
    const int64_t n = rows * channels, group = BN_LANES / channels * channels;
    const int64_t groups = (n + group - 1) / group;
    BN_COMPUTE wrap[BN_CL_COEFS * BN_NAME(cl_wrap)], shifts[BN_LANES];
    BN_NAME(cl_lanes) l = {{shifts, shifts, shifts, shifts}};
    if (grad) {
        BN_NAME(cl_wrap_coefs)(cl_coefs, channels, wrap);
        static const int used[4] = {0, 1, 5, 6}; /* mean_hi, mean_lo, relu_scale, relu_shift */
        for (int k = 0; k < 4; k++)
            l.lane[k] = wrap + used[k] * BN_NAME(cl_wrap);
    } else {
        for (int j = 0; j < BN_LANES; j++)
            shifts[j] = (BN_COMPUTE)shift[j % channels];
    }
    for (int64_t c = 0; c < channels; c++)
        sum_a[c] = sum_b[c] = 0.0;
    for (int64_t g0 = 0; g0 < groups; g0 += BN_STRETCH) {
        const int64_t g1 = groups - g0 < BN_STRETCH ? groups : g0 + BN_STRETCH;
        BN_COMPUTE acc_a[BN_LANES], acc_b[BN_LANES];
        if (g1 - g0 == BN_STRETCH && (g1 - 1) * group + BN_LANES <= n)
            BN_NAME(cl_lane_stretch)(x + g0 * group, dy + g0 * group, group, grad, relu_mask, &l, acc_a, acc_b);
        else
            BN_NAME(cl_lane_stretch_end)(x, dy, n, group, g0, g1, grad, relu_mask, &l, acc_a, acc_b);
        for (int64_t j = 0; j < group; j++)
            sum_a[j % channels] += (double)acc_a[j];
        for (int64_t j = 0; j < group; j++)
            sum_b[j % channels] += (double)acc_b[j];
    }
}

BN_INLINE void BN_NAME(cl_lane_sums)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                     const double *shift, const BN_COMPUTE *cl_coefs, int grad, int relu_mask,
                                     double *sum_a, double *sum_b)
{
    if (channels >= BN_LANES)
        BN_NAME(cl_lane_sums_rows)(x, dy, rows, channels, shift, cl_coefs, grad, relu_mask, sum_a, sum_b);
    else
        BN_NAME(cl_lane_sums_short)(x, dy, rows, channels, shift, cl_coefs, grad, relu_mask, sum_a, sum_b);
}

static void BN_NAME(cl_lane_shifted_sums)(const void *x, int64_t rows, int64_t channels, const double *shift,
                                          double *sum_d, double *sum_d2)
{
    BN_NAME(cl_lane_sums)(x, x, rows, channels, shift, NULL, 0, 0, sum_d, sum_d2);
}

static void BN_NAME(cl_lane_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t channels,
                                       const double *mean, const void *cl_coefs, int relu_mask, double *sum_dy,
                                       double *sum_dy_xmu)
{
    (void)mean; /* the lanes centre x with the coefficients' mean_hi + mean_lo */
    if (relu_mask)
        BN_NAME(cl_lane_sums)(x, dy, rows, channels, NULL, cl_coefs, 1, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(cl_lane_sums)(x, dy, rows, channels, NULL, cl_coefs, 1, 0, sum_dy, sum_dy_xmu);
}
#endif

BN_INLINE void BN_NAME(cl_output_chunk)(const BN_T *x, const BN_T *dy, BN_T *out, BN_NAME(cl_window) win,
                                        int terms)
{
    BN_WIDE_CHUNK(xv, x);
    BN_WIDE_CHUNK(dv, dy);
    BN_OUT_CHUNK(o, out);
    for (int j = 0; j < BN_LANES; j++) {
        const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(win.at, win.stride, j);
        o[j] = BN_NAME(output_value)(xv[j], dv[j], terms, &w);
    }
    BN_OUT_CHUNK_STORE(o, out);
}

/* The block as one flat array of n = rows * channels values, in whole vectors (see
 * cl_window) as output_row does a row: with `stream`, the elements before the first
 * cache-line boundary come from a vector at the start, then whole lines are written
 * past the cache; the last vector is aligned to the block's end. Those two are
 * computed before anything is written, so that an in-place output does not feed its
 * own results back. */
/* Rows of whole tiles (channels a multiple of BN_LANES), through the cache: each
 * tile's coefficients copied once to the stack for BN_CL_TILE_ROWS rows. Read
 * from cl_coefs vector by vector they are four or more times the traffic of x, from
 * L2 once a row's coefficients outgrow L1 (2048 channels: 57 KiB), which held
 * 32 x 2048 x 7 x 7 float32 eval to twice the time of the NCHW layout. */
#define BN_CL_TILE_ROWS 8
BN_INLINE void BN_NAME(cl_output_tiles)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t rows,
                                        int64_t channels, const BN_COMPUTE *cl_coefs, int terms)
{
    for (int64_t r0 = 0; r0 < rows; r0 += BN_CL_TILE_ROWS) {
        const int64_t r1 = rows - r0 < BN_CL_TILE_ROWS ? rows : r0 + BN_CL_TILE_ROWS;
        for (int64_t c0 = 0; c0 < channels; c0 += BN_LANES) {
            BN_COMPUTE tile[BN_CL_COEFS * BN_LANES];
            for (int k = 0; k < BN_CL_COEFS; k++)
                if (bn_coef_read(k, terms))
                    memcpy(tile + k * BN_LANES, cl_coefs + k * channels + c0, sizeof(BN_COMPUTE) * BN_LANES);
            /* all of the tile's rows read before any is written (into a local array, see
             * cl_output_flat): rows whose length is a multiple of 4 KiB put an output
             * store and the next row's load at addresses equal in their low 12 bits when
             * x and out share their page offset, and such a load waits for the store
             * (4K aliasing: 32x2048x7x7 NHWC float16 eval at 1.6x the time) */
            BN_T lines[BN_CL_TILE_ROWS][BN_LANES];
            for (int64_t r = r0; r < r1; r++)
                BN_NAME(cl_output_chunk)(x + r * channels + c0, dy + r * channels + c0, lines[r - r0],
                                         (BN_NAME(cl_window)){tile, BN_LANES}, terms);
            for (int64_t r = r0; r < r1; r++)
                memcpy(out + r * channels + c0, lines[r - r0], sizeof lines[0]);
        }
    }
}

BN_INLINE void BN_NAME(cl_output_flat)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t rows,
                                       int64_t channels, const BN_COMPUTE *cl_coefs, int terms, int stream)
{
    if (!stream && channels % BN_LANES == 0) {
        BN_NAME(cl_output_tiles)(x, dy, out, rows, channels, cl_coefs, terms);
        return;
    }
    enum { PER_LINE = BN_LINE_BYTES / sizeof(BN_T), LINES = BN_LANES / PER_LINE };
    const int64_t n = rows * channels;
    if (n < BN_LANES) {
        for (int64_t i = 0; i < n; i++) {
            const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, i % channels);
            BN_NAME(output_one)(x + i, dy + i, out + i, terms, &w);
        }
        return;
    }
    BN_COMPUTE wrap[BN_CL_COEFS * BN_NAME(cl_wrap)];
    BN_NAME(cl_wrap_coefs)(cl_coefs, channels, wrap);
    int64_t head = 0;
    if (stream)
        head = (int64_t)((BN_LINE_BYTES - (uintptr_t)out % BN_LINE_BYTES) % BN_LINE_BYTES) / (int64_t)sizeof(BN_T);
    head = head < n ? head : n;
    const int64_t body_end = head + (n - head) / BN_LANES * BN_LANES;
    BN_T head_chunk[BN_LANES], tail_chunk[BN_LANES];
    if (head > 0)
        BN_NAME(cl_output_chunk)(x, dy, head_chunk, BN_NAME(cl_window_at)(cl_coefs, wrap, channels, 0), terms);
    if (body_end < n)
        BN_NAME(cl_output_chunk)(x + n - BN_LANES, dy + n - BN_LANES, tail_chunk,
                                 BN_NAME(cl_window_at)(cl_coefs, wrap, channels, (n - BN_LANES) % channels), terms);
    /* runs of vectors within a row read cl_coefs directly, one that wraps past a
     * row's end the wrap copy; o is the channel at i */
    for (int64_t i = head, o = head % channels; i < body_end;) {
        const BN_NAME(cl_window) win = BN_NAME(cl_window_at)(cl_coefs, wrap, channels, o);
        const int64_t run = o + BN_LANES <= channels ? (channels - o) / BN_LANES : 1;
        const int64_t end = i + run * BN_LANES < body_end ? i + run * BN_LANES : body_end;
        for (const BN_COMPUTE *at = win.at; i < end; i += BN_LANES, at += BN_LANES) {
            /* computed into a local array, which the compiler knows aliases neither
             * the input nor the coefficients (writing out directly costs run-time
             * alias checks per vector: an in-place output is allowed) */
            BN_T lines[BN_LANES];
            BN_NAME(cl_output_chunk)(x + i, dy + i, lines, (BN_NAME(cl_window)){at, win.stride}, terms);
            if (stream)
                for (int l = 0; l < LINES; l++)
                    bn_stream_line(out + i + l * PER_LINE, lines + l * PER_LINE);
            else
                memcpy(out + i, lines, sizeof lines);
        }
        /* the channel after them, with one subtraction (short rows: BN_LANES % channels
         * on) */
        o += channels < BN_LANES ? BN_LANES % channels : run * BN_LANES;
        o -= o >= channels ? channels : 0;
    }
    if (stream) {
        /* only the new elements: non-temporal stores are not ordered with later
         * stores to the lines they wrote */
        for (int64_t i = 0; i < head; i++)
            out[i] = head_chunk[i];
        for (int64_t i = body_end; i < n; i++)
            out[i] = tail_chunk[i - (n - BN_LANES)];
        bn_stream_fence();
    } else if (body_end < n) {
        memcpy(out + n - BN_LANES, tail_chunk, sizeof tail_chunk);
    }
}

static void BN_NAME(cl_output)(const void *xv, const void *dyv, void *out, int64_t rows, int64_t channels,
                               const void *cl_coefs, int terms, int stream)
{
    const BN_T *x = xv, *dy = dyv ? (const BN_T *)dyv : x; /* a NULL dy is never read */
    /* as in output: a combination missing from BN_FOR_EACH_TERMS is computed
     * unspecialised by the default */
    switch (terms) {
#define BN_CL_CASE(t)                                                               \
    case t:                                                                         \
        BN_NAME(cl_output_flat)(x, dy, out, rows, channels, cl_coefs, t, stream);   \
        break;
        BN_FOR_EACH_TERMS(BN_CL_CASE)
#undef BN_CL_CASE
    default:
        BN_NAME(cl_output_flat)(x, dy, out, rows, channels, cl_coefs, terms, stream);
    }
}

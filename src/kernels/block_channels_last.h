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
/* Float-lane sums (see block_ops.h). Rows go in groups of R = BN_LANES / channels
 * rows (R = 1 for channels >= BN_LANES), a group in tiles of BN_LANES positions, the
 * last tile aligned to the group's end and overlapping the one before (lanes below
 * `skip` were counted by it). A tile's lanes accumulate BN_STRETCH groups in BN_COMPUTE,
 * then are folded into the double sums in lane order: a lane sums at most BN_STRETCH
 * values, and the order depends on the shape alone. Reading past the block's end
 * (the last group of short rows) goes through a zero-padded copy, its lanes
 * beyond the block masked.
 *
 * A tile's stretches are accumulated in registers (cl_lane_stretch: local
 * accumulators over a loop of constant length); accumulators in memory, reloaded
 * chunk after chunk, ran at a quarter of the speed (32 x 256 x 56 x 56 float32
 * statistics). A tile's lane values (shifts or coefficients) are set up once for
 * cl_tile_groups groups (a few stretches, a few rows of a block's memory). */
enum { BN_NAME(cl_tile_groups) = 4 * BN_STRETCH };

/* the values lane j of a tile reads: lane[k][j], k = mean_hi (or the shift), mean_lo,
 * relu_scale, relu_shift */
typedef struct {
    const BN_COMPUTE *lane[4];
} BN_NAME(cl_lanes);

BN_INLINE void BN_NAME(cl_lane_chunk)(const BN_T *x, const BN_T *dy, int64_t live, int grad, int relu_mask,
                                      const BN_NAME(cl_lanes) *l, BN_COMPUTE *acc_a, BN_COMPUTE *acc_b)
{
    BN_WIDE_CHUNK(xv, x);
    BN_COMPUTE a[BN_LANES], b[BN_LANES];
    if (grad) {
        BN_WIDE_CHUNK(dv, dy);
        for (int j = 0; j < BN_LANES; j++) {
            const BN_NAME(compute_coefs) w = {l->lane[0][j], l->lane[1][j], 0, 0, 0, l->lane[2][j], l->lane[3][j]};
            const BN_COMPUTE centered = BN_NAME(centered)(xv[j], &w);
            const int passes = !relu_mask || BN_NAME(relu_passes)(centered, &w);
            a[j] = j < live && passes ? dv[j] : (BN_COMPUTE)0;
            b[j] = a[j] * centered;
        }
    } else {
        for (int j = 0; j < BN_LANES; j++)
            a[j] = j < live ? xv[j] - l->lane[0][j] : (BN_COMPUTE)0;
        for (int j = 0; j < BN_LANES; j++)
            b[j] = a[j] * a[j];
    }
    for (int j = 0; j < BN_LANES; j++)
        acc_a[j] += a[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_b[j] += b[j];
}

/* The sums of one tile over a whole stretch, BN_STRETCH groups `group` elements apart
 * and all within the block. */
BN_INLINE void BN_NAME(cl_lane_stretch)(const BN_T *x, const BN_T *dy, int64_t group, int grad, int relu_mask,
                                        const BN_NAME(cl_lanes) *l, BN_COMPUTE *out_a, BN_COMPUTE *out_b)
{
    BN_COMPUTE a[BN_LANES] = {0}, b[BN_LANES] = {0};
    for (int g = 0; g < BN_STRETCH; g++)
        BN_NAME(cl_lane_chunk)(x + g * group, dy + g * group, BN_LANES, grad, relu_mask, l, a, b);
    memcpy(out_a, a, sizeof a);
    memcpy(out_b, b, sizeof b);
}

/* The same for groups g0..g1 of a tile at c0 that are fewer or reach past the block's
 * n elements. */
static void BN_NAME(cl_lane_stretch_end)(const BN_T *x, const BN_T *dy, int64_t n, int64_t group, int64_t g0,
                                         int64_t g1, int64_t c0, int grad, int relu_mask, const BN_NAME(cl_lanes) *l,
                                         BN_COMPUTE *out_a, BN_COMPUTE *out_b)
{
    for (int j = 0; j < BN_LANES; j++)
        out_a[j] = out_b[j] = 0;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t at = g * group + c0;
        if (at + BN_LANES <= n) {
            BN_NAME(cl_lane_chunk)(x + at, dy + at, BN_LANES, grad, relu_mask, l, out_a, out_b);
        } else {
            BN_T pad_x[BN_LANES] = {0}, pad_dy[BN_LANES] = {0};
            memcpy(pad_x, x + at, (size_t)(n - at) * sizeof(BN_T));
            if (grad)
                memcpy(pad_dy, dy + at, (size_t)(n - at) * sizeof(BN_T));
            BN_NAME(cl_lane_chunk)(pad_x, pad_dy, n - at, grad, relu_mask, l, out_a, out_b);
        }
    }
}

/* lanes lo..hi of a tile at group position c0 into the sums of their channels */
static inline void BN_NAME(cl_fold)(const BN_COMPUTE *acc, int64_t c0, int64_t lo, int64_t hi, int64_t channels,
                                    double *sum)
{
    if (lo == 0 && hi == BN_LANES && c0 + BN_LANES <= channels) { /* a whole tile within a row */
        for (int j = 0; j < BN_LANES; j++)
            sum[c0 + j] += (double)acc[j];
        return;
    }
    for (int64_t q = c0 + lo; q < c0 + hi;) {
        const int64_t c = q % channels, len = channels - c < c0 + hi - q ? channels - c : c0 + hi - q;
        for (int64_t i = 0; i < len; i++)
            sum[c + i] += (double)acc[q - c0 + i];
        q += len;
    }
}

/* The whole stretches from group h0 on of a tile at c0 whose lanes are channels
 * c0.. in order, folded into sum_a[0..BN_LANES) and sum_b in registers: the
 * additions of cl_fold in its order, without storing and reloading the sums every
 * stretch (that round trip was 14 % of the instructions of 8 x 64 x 28 x 28 float32
 * statistics, callgrind).
 * Returns the first group left to the caller. */
BN_INLINE int64_t BN_NAME(cl_lane_whole_stretches)(const BN_T *x, const BN_T *dy, int64_t n, int64_t group,
                                                   int64_t h0, int64_t h1, int64_t c0, int grad, int relu_mask,
                                                   const BN_NAME(cl_lanes) *l, double *sum_a, double *sum_b)
{
    double fold_a[BN_LANES], fold_b[BN_LANES];
    memcpy(fold_a, sum_a, sizeof fold_a);
    memcpy(fold_b, sum_b, sizeof fold_b);
    int64_t g0 = h0;
    for (; h1 - g0 >= BN_STRETCH && (g0 + BN_STRETCH - 1) * group + c0 + BN_LANES <= n; g0 += BN_STRETCH) {
        BN_COMPUTE acc_a[BN_LANES], acc_b[BN_LANES];
        BN_NAME(cl_lane_stretch)(x + g0 * group + c0, dy + g0 * group + c0, group, grad, relu_mask, l, acc_a, acc_b);
        for (int j = 0; j < BN_LANES; j++)
            fold_a[j] += (double)acc_a[j];
        for (int j = 0; j < BN_LANES; j++)
            fold_b[j] += (double)acc_b[j];
    }
    memcpy(sum_a, fold_a, sizeof fold_a);
    memcpy(sum_b, fold_b, sizeof fold_b);
    return g0;
}

/* grad = 0: sum_a, sum_b = sum_d, sum_d2 of d = x - shift; grad = 1: sum_dy,
 * sum_dy_xmu (dy masked with relu_mask), dy * (x - mean) with (x - mean) as the
 * output loops form it */
BN_INLINE void BN_NAME(cl_lane_sums)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t channels,
                                     const double *shift, const BN_COMPUTE *cl_coefs, int grad, int relu_mask,
                                     double *sum_a, double *sum_b)
{
    const int64_t n = rows * channels;
    const int64_t per_group = channels >= BN_LANES ? 1 : BN_LANES / channels, group = per_group * channels;
    const int64_t groups = (rows + per_group - 1) / per_group;
    const int64_t tiles = (group + BN_LANES - 1) / BN_LANES, width = group < BN_LANES ? group : BN_LANES;
    BN_COMPUTE wrap[BN_CL_COEFS * BN_NAME(cl_wrap)];
    if (grad)
        BN_NAME(cl_wrap_coefs)(cl_coefs, channels, wrap);
    for (int64_t c = 0; c < channels; c++)
        sum_a[c] = sum_b[c] = 0.0;
    for (int64_t h0 = 0; h0 < groups; h0 += BN_NAME(cl_tile_groups)) {
        const int64_t h1 = groups - h0 < BN_NAME(cl_tile_groups) ? groups : h0 + BN_NAME(cl_tile_groups);
        /* the tiles read these groups column by column: ask for the next ones in
         * memory order, which the hardware prefetchers would not see coming */
        const int64_t next = h1 * group < n ? h1 * group : n;
        const int64_t ahead = n - next < BN_NAME(cl_tile_groups) * group ? n - next : BN_NAME(cl_tile_groups) * group;
        bn_prefetch_range(x + next, (size_t)ahead * sizeof(BN_T));
        if (grad)
            bn_prefetch_range(dy + next, (size_t)ahead * sizeof(BN_T));
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t c0 = group < BN_LANES ? 0 : (t * BN_LANES < group - BN_LANES ? t * BN_LANES : group - BN_LANES);
            BN_COMPUTE shifts[BN_LANES];
            BN_NAME(cl_lanes) l = {{shifts, shifts, shifts, shifts}};
            if (grad) {
                const BN_NAME(cl_window) win = BN_NAME(cl_window_at)(cl_coefs, wrap, channels, c0);
                static const int used[4] = {0, 1, 5, 6}; /* mean_hi, mean_lo, relu_scale, relu_shift */
                for (int k = 0; k < 4; k++)
                    l.lane[k] = win.at + used[k] * win.stride;
            } else {
                /* shift is float-rounded already (fused.c): the conversion is exact.
                 * A tile within a row converts in one vector loop: the wrapping loop
                 * was a sixth of the instructions of 8 x 64 x 28 x 28 float32
                 * statistics (callgrind). */
                if (c0 + BN_LANES <= channels)
                    for (int j = 0; j < BN_LANES; j++)
                        shifts[j] = (BN_COMPUTE)shift[c0 + j];
                else
                    for (int64_t j = 0, c = c0; j < BN_LANES; j++, c = c + 1 == channels ? 0 : c + 1)
                        shifts[j] = (BN_COMPUTE)shift[c];
            }
            const int64_t skip = t * BN_LANES - c0;
            int64_t g0 = h0;
            if (skip == 0 && c0 + BN_LANES <= channels) /* a whole tile within a row */
                g0 = BN_NAME(cl_lane_whole_stretches)(x, dy, n, group, h0, h1, c0, grad, relu_mask, &l, sum_a + c0,
                                                      sum_b + c0);
            for (; g0 < h1; g0 += BN_STRETCH) {
                const int64_t g1 = h1 - g0 < BN_STRETCH ? h1 : g0 + BN_STRETCH;
                BN_COMPUTE acc_a[BN_LANES], acc_b[BN_LANES];
                if (g1 - g0 == BN_STRETCH && (g1 - 1) * group + c0 + BN_LANES <= n)
                    BN_NAME(cl_lane_stretch)(x + g0 * group + c0, dy + g0 * group + c0, group, grad, relu_mask, &l,
                                             acc_a, acc_b);
                else
                    BN_NAME(cl_lane_stretch_end)(x, dy, n, group, g0, g1, c0, grad, relu_mask, &l, acc_a, acc_b);
                BN_NAME(cl_fold)(acc_a, c0, skip, width, channels, sum_a);
                BN_NAME(cl_fold)(acc_b, c0, skip, width, channels, sum_b);
            }
        }
    }
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

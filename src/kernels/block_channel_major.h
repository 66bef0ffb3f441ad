/*
 * Channel-major (NCHW) block loops: `rows` rows of `width` contiguous elements,
 * row r starting `stride` elements after row r - 1. Part of block_template.h,
 * included by it with its macros and per-element formulas defined.
 */

/* Rows go in whole chunks. What is left of a row goes element by element, element
 * j of the rest to lane accumulator j, which compilers vectorise for double.
 * float32 and float16 (BN_CHUNKED_TAILS) instead end a row of at least BN_LANES elements
 * with one more chunk, aligned to the row's end and overlapping the one before:
 * reductions mask out its first `skip` lanes, counted already, and output loops
 * compute it before they write anything (so that an in-place output does not feed
 * its own results back) and store it afterwards (see output_row). Converting float16
 * element by element would take up to a third of the time of rows of 7 x 7 or
 * 28 x 28 values; float32 rows of 7 x 7 ran 20 % slower element by element. The chunk functions called with skip = 0 compile to plain loops.
 *
 * BN_ROW_PIECES walks one row of `width` elements for the reductions: CHUNK(i, skip)
 * for the chunk at element i, ONE(i, j) for element i of the rest (lane j), and
 * STEP() after each chunk and after the rest, when every lane has taken at most one
 * more value (the float-lane sums count these steps, see lane_shifted_sums). */
#define BN_ROW_PIECES(width, CHUNK, ONE, STEP)                                                         \
    do {                                                                                               \
        int64_t i_ = 0;                                                                                \
        for (; i_ + BN_LANES <= (width); i_ += BN_LANES) {                                             \
            CHUNK(i_, 0);                                                                              \
            STEP();                                                                                    \
        }                                                                                              \
        if (BN_CHUNKED_TAILS && i_ < (width) && (width) >= BN_LANES) {                                 \
            CHUNK((width) - BN_LANES, BN_LANES - ((width) - i_));                                      \
            STEP();                                                                                    \
        } else if (i_ < (width)) {                                                                     \
            for (int j_ = 0; i_ + j_ < (width); j_++)                                                  \
                ONE(i_ + j_, j_);                                                                      \
            STEP();                                                                                    \
        }                                                                                              \
    } while (0)
#define BN_NO_STEP()

static inline void BN_NAME(sum_chunk)(const BN_T *x, int64_t skip, double acc[BN_LANES])
{
    BN_WIDE_CHUNK(v, x);
    for (int j = 0; j < BN_LANES; j++)
        acc[j] += j >= skip ? (double)v[j] : 0.0;
}

static double BN_NAME(sum)(const void *xv, int64_t rows, int64_t width, int64_t stride)
{
    const BN_T *x = xv;
    double acc[BN_LANES] = {0};
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
#define BN_CHUNK(i, skip) BN_NAME(sum_chunk)(row + (i), skip, acc)
#define BN_ONE(i, j) acc[j] += (double)BN_WIDEN1(row + (i))
        BN_ROW_PIECES(width, BN_CHUNK, BN_ONE, BN_NO_STEP);
#undef BN_CHUNK
#undef BN_ONE
    }
    return bn_combine_lanes(acc);
}

static inline void BN_NAME(shifted_sums_chunk)(const BN_T *x, int64_t skip, double shift, double acc_d[BN_LANES],
                                               double acc_d2[BN_LANES])
{
    BN_WIDE_CHUNK(v, x);
    double d[BN_LANES];
    for (int j = 0; j < BN_LANES; j++)
        d[j] = j >= skip ? (double)v[j] - shift : 0.0;
    for (int j = 0; j < BN_LANES; j++)
        acc_d[j] += d[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_d2[j] += d[j] * d[j];
}

/* Sums of d = x - shift and of d^2. For float64 data (BN_COMPUTE double) with the
 * block's mean as the shift these are the centred sums of a two-pass variance. For
 * float32 and float16 data, in one pass with an estimate of the block's mean as the
 * shift: this is the loop fused.c falls back to where the float lanes
 * (lane_shifted_sums) may not meet their bound. d is formed in double, where the
 * difference of two float16 values is always exact and that of two float32 values is
 * exact unless they lie more than 2^29 apart in magnitude; docs/numerics.md derives
 * the resulting error bounds. */
static void BN_NAME(shifted_sums)(const void *xv, int64_t rows, int64_t width, int64_t stride, double shift,
                                  double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    double acc_d[BN_LANES] = {0}, acc_d2[BN_LANES] = {0};
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
#define BN_CHUNK(i, skip) BN_NAME(shifted_sums_chunk)(row + (i), skip, shift, acc_d, acc_d2)
#define BN_ONE(i, j)                                                                                   \
    do {                                                                                               \
        const double d = (double)BN_WIDEN1(row + (i)) - shift;                                         \
        acc_d[j] += d;                                                                                 \
        acc_d2[j] += d * d;                                                                            \
    } while (0)
        BN_ROW_PIECES(width, BN_CHUNK, BN_ONE, BN_NO_STEP);
#undef BN_CHUNK
#undef BN_ONE
    }
    *sum_d = bn_combine_lanes(acc_d);
    *sum_d2 = bn_combine_lanes(acc_d2);
}

BN_INLINE void BN_NAME(grad_sums_chunk)(const BN_T *x, const BN_T *dy, int64_t skip, int relu_mask,
                                        double mean, const BN_NAME(compute_coefs) *w, double acc_g[BN_LANES],
                                        double acc_gx[BN_LANES])
{
    BN_WIDE_CHUNK(xv, x);
    BN_WIDE_CHUNK(dv, dy);
    double g[BN_LANES];
    for (int j = 0; j < BN_LANES; j++)
        g[j] = j >= skip ? (double)BN_NAME(masked_dy)(xv[j], dv[j], relu_mask, w) : 0.0;
    for (int j = 0; j < BN_LANES; j++)
        acc_g[j] += g[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_gx[j] += j >= skip ? g[j] * ((double)xv[j] - mean) : 0.0;
}

BN_INLINE void BN_NAME(grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t width,
                                       int64_t stride, const bn_coefs *k, int relu_mask, double *sum_dy,
                                       double *sum_dy_xmu)
{
    double acc_g[BN_LANES] = {0}, acc_gx[BN_LANES] = {0};
    const double mean = k->mean;
    const BN_NAME(compute_coefs) w = BN_NAME(to_compute)(k);
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
#define BN_CHUNK(i, skip) BN_NAME(grad_sums_chunk)(xr + (i), gr + (i), skip, relu_mask, mean, &w, acc_g, acc_gx)
#define BN_ONE(i, j)                                                                                   \
    do {                                                                                               \
        const BN_COMPUTE xi = BN_WIDEN1(xr + (i));                                                     \
        const double g = (double)BN_NAME(masked_dy)(xi, BN_WIDEN1(gr + (i)), relu_mask, &w);           \
        acc_g[j] += g;                                                                                 \
        acc_gx[j] += g * ((double)xi - mean);                                                          \
    } while (0)
        BN_ROW_PIECES(width, BN_CHUNK, BN_ONE, BN_NO_STEP);
#undef BN_CHUNK
#undef BN_ONE
    }
    *sum_dy = bn_combine_lanes(acc_g);
    *sum_dy_xmu = bn_combine_lanes(acc_gx);
}

static void BN_NAME(grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                               const bn_coefs *k, int relu_mask, double *sum_dy, double *sum_dy_xmu)
{
    if (relu_mask)
        BN_NAME(grad_sums_rows)(x, dy, rows, width, stride, k, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(grad_sums_rows)(x, dy, rows, width, stride, k, 0, sum_dy, sum_dy_xmu);
}

#if BN_LANE_SUMS
/* ---- float-lane sums (see block_ops.h; docs/numerics.md derives their bound) ----
 * Each of the BN_LANES accumulators of BN_COMPUTE takes one value per step of
 * BN_ROW_PIECES, and every BN_STRETCH steps is added to its own double total and
 * cleared; the totals are combined as the double loops combine their lanes. The
 * steps depend only on the block's shape, so the results are the same on every
 * level and thread count. */

/* Each lane into its double total, then cleared. */
static inline void BN_NAME(fold_lanes)(BN_COMPUTE acc[BN_LANES], double total[BN_LANES])
{
    for (int j = 0; j < BN_LANES; j++) {
        total[j] += (double)acc[j];
        acc[j] = 0;
    }
}

/* 0 for the first BN_LANES entries, then 1: lane j of a chunk that skips its first
 * `skip` lanes is scaled by after_skip[BN_LANES - skip + j]. A condition on j
 * instead makes GCC split the loops at skip and run the rest one element at a time
 * (134 instructions a chunk on rows of 7 x 7). Scaling a lane that is not finite
 * gives NaN where the condition gave 0, but a block with anything not finite is
 * summed again by the double loops anyway. */
_Static_assert(BN_LANES == 32, "after_skip is written out for 32 lanes");
#define BN_EIGHT(v) v, v, v, v, v, v, v, v
static const BN_COMPUTE BN_NAME(after_skip)[2 * BN_LANES] = {BN_EIGHT(0), BN_EIGHT(0), BN_EIGHT(0), BN_EIGHT(0),
                                                             BN_EIGHT(1), BN_EIGHT(1), BN_EIGHT(1), BN_EIGHT(1)};
#undef BN_EIGHT

static inline void BN_NAME(lane_shifted_sums_chunk)(const BN_T *x, int64_t skip, BN_COMPUTE shift,
                                                    BN_COMPUTE acc_d[BN_LANES], BN_COMPUTE acc_d2[BN_LANES])
{
    BN_WIDE_CHUNK(v, x);
    const BN_COMPUTE *keep = BN_NAME(after_skip) + BN_LANES - skip;
    BN_COMPUTE d[BN_LANES];
    for (int j = 0; j < BN_LANES; j++)
        d[j] = (v[j] - shift) * keep[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_d[j] += d[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_d2[j] += d[j] * d[j];
}

/* d = x - shift formed in BN_COMPUTE: shift is a BN_COMPUTE value (fused.c's
 * shift_estimate rounds it), so the conversion below is exact. */
static void BN_NAME(lane_shifted_sums)(const void *xv, int64_t rows, int64_t width, int64_t stride, double shift,
                                       double *sum_d, double *sum_d2)
{
    const BN_T *x = xv;
    const BN_COMPUTE k = (BN_COMPUTE)shift;
    BN_COMPUTE acc_d[BN_LANES] = {0}, acc_d2[BN_LANES] = {0};
    double total_d[BN_LANES] = {0}, total_d2[BN_LANES] = {0};
    int steps = 0;
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *row = x + r * stride;
#define BN_CHUNK(i, skip) BN_NAME(lane_shifted_sums_chunk)(row + (i), skip, k, acc_d, acc_d2)
#define BN_ONE(i, j)                                                                                   \
    do {                                                                                               \
        const BN_COMPUTE d = BN_WIDEN1(row + (i)) - k;                                                 \
        acc_d[j] += d;                                                                                 \
        acc_d2[j] += d * d;                                                                            \
    } while (0)
#define BN_STEP()                                                                                      \
    if (++steps == BN_STRETCH) {                                                                       \
        BN_NAME(fold_lanes)(acc_d, total_d);                                                           \
        BN_NAME(fold_lanes)(acc_d2, total_d2);                                                         \
        steps = 0;                                                                                     \
    }
        BN_ROW_PIECES(width, BN_CHUNK, BN_ONE, BN_STEP);
#undef BN_CHUNK
#undef BN_ONE
#undef BN_STEP
    }
    BN_NAME(fold_lanes)(acc_d, total_d);
    BN_NAME(fold_lanes)(acc_d2, total_d2);
    *sum_d = bn_combine_lanes(total_d);
    *sum_d2 = bn_combine_lanes(total_d2);
}

/* g = dy masked by the forward's ReLU and g * (x - mean), in BN_COMPUTE with x - mean
 * from the split mean (see centered). */
BN_INLINE void BN_NAME(lane_grad_sums_chunk)(const BN_T *x, const BN_T *dy, int64_t skip, int relu_mask,
                                             const BN_NAME(compute_coefs) *w, BN_COMPUTE acc_g[BN_LANES],
                                             BN_COMPUTE acc_gx[BN_LANES])
{
    BN_WIDE_CHUNK(xv, x);
    BN_WIDE_CHUNK(dv, dy);
    const BN_COMPUTE *keep = BN_NAME(after_skip) + BN_LANES - skip; /* see lane_shifted_sums_chunk */
    BN_COMPUTE g[BN_LANES];
    for (int j = 0; j < BN_LANES; j++)
        g[j] = BN_NAME(masked_dy)(xv[j], dv[j], relu_mask, w) * keep[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_g[j] += g[j];
    for (int j = 0; j < BN_LANES; j++)
        acc_gx[j] += g[j] * BN_NAME(centered)(xv[j], w);
}

BN_INLINE void BN_NAME(lane_grad_sums_rows)(const BN_T *x, const BN_T *dy, int64_t rows, int64_t width,
                                            int64_t stride, const bn_coefs *k, int relu_mask, double *sum_dy,
                                            double *sum_dy_xmu)
{
    BN_COMPUTE acc_g[BN_LANES] = {0}, acc_gx[BN_LANES] = {0};
    double total_g[BN_LANES] = {0}, total_gx[BN_LANES] = {0};
    int steps = 0;
    const BN_NAME(compute_coefs) w = BN_NAME(to_compute)(k);
    for (int64_t r = 0; r < rows; r++) {
        const BN_T *xr = x + r * stride, *gr = dy + r * stride;
#define BN_CHUNK(i, skip) BN_NAME(lane_grad_sums_chunk)(xr + (i), gr + (i), skip, relu_mask, &w, acc_g, acc_gx)
#define BN_ONE(i, j)                                                                                   \
    do {                                                                                               \
        const BN_COMPUTE xi = BN_WIDEN1(xr + (i));                                                     \
        const BN_COMPUTE g = BN_NAME(masked_dy)(xi, BN_WIDEN1(gr + (i)), relu_mask, &w);               \
        acc_g[j] += g;                                                                                 \
        acc_gx[j] += g * BN_NAME(centered)(xi, &w);                                                    \
    } while (0)
#define BN_STEP()                                                                                      \
    if (++steps == BN_STRETCH) {                                                                       \
        BN_NAME(fold_lanes)(acc_g, total_g);                                                           \
        BN_NAME(fold_lanes)(acc_gx, total_gx);                                                         \
        steps = 0;                                                                                     \
    }
        BN_ROW_PIECES(width, BN_CHUNK, BN_ONE, BN_STEP);
#undef BN_CHUNK
#undef BN_ONE
#undef BN_STEP
    }
    BN_NAME(fold_lanes)(acc_g, total_g);
    BN_NAME(fold_lanes)(acc_gx, total_gx);
    *sum_dy = bn_combine_lanes(total_g);
    *sum_dy_xmu = bn_combine_lanes(total_gx);
}

static void BN_NAME(lane_grad_sums)(const void *x, const void *dy, int64_t rows, int64_t width, int64_t stride,
                                    const bn_coefs *k, int relu_mask, double *sum_dy, double *sum_dy_xmu)
{
    if (relu_mask)
        BN_NAME(lane_grad_sums_rows)(x, dy, rows, width, stride, k, 1, sum_dy, sum_dy_xmu);
    else
        BN_NAME(lane_grad_sums_rows)(x, dy, rows, width, stride, k, 0, sum_dy, sum_dy_xmu);
}
#endif

BN_INLINE void BN_NAME(output_one)(const BN_T *x, const BN_T *dy, BN_T *out, int terms,
                                   const BN_NAME(compute_coefs) *w)
{
    const BN_COMPUTE xi = terms & (BN_USE_X | BN_RELU_MASK) ? BN_WIDEN1(x) : 0;
    const BN_COMPUTE di = terms & BN_USE_DY ? BN_WIDEN1(dy) : 0;
    BN_NARROW1(out, BN_NAME(output_value)(xi, di, terms, w));
}

/* Unread inputs (see output_value) are dead code once terms is a constant. */
BN_INLINE void BN_NAME(output_chunk)(const BN_T *x, const BN_T *dy, BN_T *out, int terms,
                                     const BN_NAME(compute_coefs) *w)
{
    BN_WIDE_CHUNK(xv, x);
    BN_WIDE_CHUNK(dv, dy);
    BN_OUT_CHUNK(o, out);
    for (int j = 0; j < BN_LANES; j++)
        o[j] = BN_NAME(output_value)(xv[j], dv[j], terms, w);
    BN_OUT_CHUNK_STORE(o, out);
}

/* Whole chunks from i to end (a multiple of BN_LANES further); with `stream`, out + i
 * is at a cache-line boundary and the chunks are written past the cache: an output
 * much larger than the cache would otherwise evict the input still to be read, and
 * cost a read of each line before it is written. */
BN_INLINE void BN_NAME(output_chunks)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t i, int64_t end,
                                      const BN_NAME(compute_coefs) *w, int terms, int stream)
{
    enum { PER_LINE = BN_LINE_BYTES / sizeof(BN_T), LINES = BN_LANES / PER_LINE };
    for (; i < end; i += BN_LANES) {
        if (stream) {
            BN_T lines[BN_LANES];
            BN_NAME(output_chunk)(x + i, dy + i, lines, terms, w);
            for (int l = 0; l < LINES; l++)
                bn_stream_line(out + i + l * PER_LINE, lines + l * PER_LINE);
        } else {
            BN_NAME(output_chunk)(x + i, dy + i, out + i, terms, w);
        }
    }
}

/* One output row: the elements before the first cache-line boundary when streaming
 * (arrays are aligned to their element size), whole chunks, then the rest. With
 * chunked tails (see sum_chunk) the first and the rest come from chunks at the
 * row's start and end, computed before anything is written. */
BN_INLINE void BN_NAME(output_row)(const BN_T *x, const BN_T *dy, BN_T *out, int64_t width,
                                   const BN_NAME(compute_coefs) *w, int terms, int stream)
{
    int64_t head = 0;
    if (stream)
        head = (int64_t)((BN_LINE_BYTES - (uintptr_t)out % BN_LINE_BYTES) % BN_LINE_BYTES) / (int64_t)sizeof(BN_T);
    head = head < width ? head : width;
    const int64_t body_end = head + (width - head) / BN_LANES * BN_LANES;
    if (BN_CHUNKED_TAILS && width >= BN_LANES) {
        BN_T head_chunk[BN_LANES], tail_chunk[BN_LANES];
        if (head > 0)
            BN_NAME(output_chunk)(x, dy, head_chunk, terms, w);
        if (body_end < width)
            BN_NAME(output_chunk)(x + width - BN_LANES, dy + width - BN_LANES, tail_chunk, terms, w);
        BN_NAME(output_chunks)(x, dy, out, head, body_end, w, terms, stream);
        if (stream) {
            /* only the new elements: non-temporal stores are not ordered with later
             * stores to the lines they wrote */
            for (int64_t i = 0; i < head; i++)
                out[i] = head_chunk[i];
            for (int64_t i = body_end; i < width; i++)
                out[i] = tail_chunk[i - (width - BN_LANES)];
        } else if (body_end < width) {
            /* whole (elements in the overlap get the values they already have): one
             * fixed-size copy instead of a call for a few bytes */
            memcpy(out + width - BN_LANES, tail_chunk, sizeof tail_chunk);
        }
        return;
    }
    for (int64_t i = 0; i < head; i++)
        BN_NAME(output_one)(x + i, dy + i, out + i, terms, w);
    BN_NAME(output_chunks)(x, dy, out, head, body_end, w, terms, stream);
    for (int64_t i = body_end; i < width; i++)
        BN_NAME(output_one)(x + i, dy + i, out + i, terms, w);
}

static void BN_NAME(output)(const void *xv, const void *dyv, void *outv, int64_t rows, int64_t width,
                            int64_t stride, const bn_coefs *k, int terms, int stream)
{
    const BN_T *x = xv, *dy = dyv;
    BN_T *out = outv;
    const BN_NAME(compute_coefs) w = BN_NAME(to_compute)(k);
    /* the switch outside the row loop: rows can be as short as a few elements. A
     * NULL dy is never read (no BN_USE_DY); x + offset stands in for it. A
     * combination missing from BN_FOR_EACH_TERMS takes the default: correct, only
     * not specialised for its terms. */
#define BN_ROW_LOOP(t)                                                                                  \
    for (int64_t r = 0; r < rows; r++)                                                                  \
        BN_NAME(output_row)(x + r * stride, dy ? dy + r * stride : x + r * stride, out + r * stride,     \
                            width, &w, t, stream);
#define BN_ROW_CASE(t)                                                                                  \
    case t:                                                                                             \
        BN_ROW_LOOP(t)                                                                                  \
        break;
    switch (terms) {
        BN_FOR_EACH_TERMS(BN_ROW_CASE)
    default:
        BN_ROW_LOOP(terms)
    }
#undef BN_ROW_CASE
#undef BN_ROW_LOOP
    if (stream)
        bn_stream_fence();
}

/* Rows first .. first + count of an (N, C, S) array in memory order, row q being
 * channel q % channels, each with its channel's coefficient vectors. One call for
 * a run of rows, so that rows of a few dozen values (7 x 7) do not each pay a call
 * and the conversion of their coefficients. As in output, a NULL dy is never read. */
static void BN_NAME(output_rows)(const void *xv, const void *dyv, void *outv, int64_t first, int64_t count,
                                 int64_t width, int64_t channels, const void *cl_coefsv, int terms, int stream)
{
    const BN_T *x = xv, *dy = dyv ? (const BN_T *)dyv : x;
    BN_T *out = outv;
    const BN_COMPUTE *cl_coefs = cl_coefsv;
#define BN_ROWS_LOOP(t)                                                                                 \
    for (int64_t q = first, c = first % channels; q < first + count; q++, c = c + 1 == channels ? 0 : c + 1) { \
        const BN_NAME(compute_coefs) w = BN_NAME(cl_coefs_at)(cl_coefs, channels, c);                   \
        BN_NAME(output_row)(x + q * width, dy + q * width, out + q * width, width, &w, t, stream);      \
    }
#define BN_ROWS_CASE(t)                                                                                 \
    case t:                                                                                             \
        BN_ROWS_LOOP(t)                                                                                 \
        break;
    switch (terms) { /* as in output */
        BN_FOR_EACH_TERMS(BN_ROWS_CASE)
    default:
        BN_ROWS_LOOP(terms)
    }
#undef BN_ROWS_CASE
#undef BN_ROWS_LOOP
    if (stream)
        bn_stream_fence();
}

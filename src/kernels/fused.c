/*
 * Scheduling of the batch-norm kernels over channels and blocks.
 *
 * A kernel is up to four steps:
 *   prepare  sets per-channel coefficients that gather needs;
 *   gather   reads a block and writes its partial results per channel;
 *   reduce   merges the partials of one channel in block order, giving the
 *            channel's coefficients;
 *   apply    writes a block of the output from those coefficients.
 * Block boundaries and merge orders depend only on the shape, so results are the
 * same for every thread count and schedule.
 *
 * Channel-major (NCHW) data: each channel (N rows of S elements, C * S apart) is cut
 * into blocks of about BN_BLOCK_ELEMS elements, whole rows when S is small, pieces
 * of a row when S is large. With many channels one task does a whole channel,
 * gathering its blocks, reducing, then applying them in reverse so that the most
 * recently read ones are still in cache: memory sees about one read of the input.
 * With few channels the three steps are three pool runs over all blocks, so every
 * thread has work. An eval forward (nothing to gather) writes its output in memory
 * order instead, rows of consecutive channels one after the other: it reads x once
 * whatever the schedule, and one stream keeps the hardware prefetcher ahead where N
 * rows C * S apart per channel do not (32 x 512 x 28 x 28 float32 eval, 2 threads:
 * 5.6 against 3.1 ms). So does the output of rows of a few hundred bytes once the
 * gather and reduce steps have run by channel (in_memory_order).
 *
 * Channels-last data (NHWC, and (N, C) input): a block is a run of whole rows, each
 * holding every channel; gather and apply work on vectors across channels, and the
 * steps are always three pool runs.
 */
#include "bnorm_kernels.h"

#include <math.h>
#include <string.h>

#include "cache.h"
#include "dispatch.h"
#include "pool.h"
#include "workspace.h"

/* Elements per block: two passes over a block run from the core's private cache. */
#define BN_BLOCK_ELEMS 16384
/* NCHW by-channel scheduling when there are at least this many channels per thread;
 * the channels are then split into this many runs of consecutive channels per thread. */
#define BN_CHANNELS_PER_THREAD 4
/* NCHW rows at most this long are short: N of them C * S apart defeat the hardware
 * prefetcher, and the loads then wait on memory one row at a time (32 x 2048 x 7 x 7
 * input ran at a tenth of copy speed). Channels of short rows are prefetched a few
 * channels ahead. */
#define BN_SHORT_ROW_BYTES 2048
#define BN_PREFETCH_AHEAD 4
/* NCHW rows at most this long are written in memory order after a gather too (see
 * in_memory_order); longer ones by channel, while the channel is in cache. */
#define BN_SCATTERED_ROW_BYTES 1024
/* Channels-last data is cut into at most this many row blocks, so that the per-block
 * vectors over channels stay O(C) (a few hundred bytes per channel) however many
 * rows there are; each block is read in one pass for float32 and float16. */
#define BN_CL_MAX_BLOCKS 4
/* Channels per task of the prepare and reduce steps run over all channels. */
#define BN_CHANNEL_RUN 64
/* Partial results per block and channel, and coefficients per channel. */
#define BN_PARTIALS 3
#define BN_COEFS 5

typedef struct bn_job bn_job;
typedef void (*bn_block_step)(bn_job *job, int64_t c, int64_t b);
typedef void (*bn_channel_step)(bn_job *job, int64_t c);

typedef struct {
    int64_t offset; /* elements from the start of the channel (NCHW) or of the array */
    int64_t rows, width;
} bn_block;

struct bn_job {
    bn_dtype dtype;
    const bn_block_ops *ops;
    bn_dims dims;
    int64_t channel_blocks; /* blocks holding part of a channel: NCHW, its own; channels-last, every row block */
    int64_t rows_per_block;
    int64_t blocks_per_row; /* NCHW blocks that are pieces of one row; else 0 */
    int64_t channels_per_run; /* by-channel schedule: consecutive channels per task */
    int stream;             /* write the output with non-temporal stores */
    int in_memory_order;    /* NCHW: apply as one pass over the output in memory order */
    int terms;              /* of the output loops: BN_USE_X, BN_USE_DY, BN_RELU_* */
    /* NCHW steps take (c, b); channels-last gather and apply ignore c */
    bn_channel_step prepare;
    bn_block_step gather;
    bn_channel_step reduce;
    bn_block_step apply;
    /* in the workspace (workspace.h); partials and scratch only with a gather step */
    double *partials; /* BN_PARTIALS per (channel, block), at partials_of(c, b) */
    double *coef;     /* BN_COEFS vectors of C: k_dy, k_xmu, k_const, relu_scale, relu_shift */
    void *cl_coefs;   /* channels-last, and NCHW rows in memory order: coefficient vectors */
    double *scratch;  /* channels-last gather: BN_PARTIALS vectors of C per block */
    /* operands */
    const char *x, *dy;
    char *out;
    const void *gamma, *beta;
    double eps;
    double *mean, *var, *invstd;
    int batch_stats, relu;
    void *dgamma, *dbeta;
    /* split phases (bn_grad_sums writes them; bn_backward_from_sums reads them, with count) */
    double *sum_dy, *sum_dy_xmu, count;
};

enum { K_DY = 0, K_XMU = 1, K_CONST = 2, K_RELU_SCALE = 3, K_RELU_SHIFT = 4 };

static double load_or(bn_dtype dtype, const void *p, int64_t i, double fallback)
{
    return p == NULL ? fallback : bn_load(dtype, p, i);
}

static double *coef_of(bn_job *job, int k) { return job->coef + k * job->dims.c; }

static bn_coefs coefs_of_channel(bn_job *job, int64_t c)
{
    return (bn_coefs){job->mean[c],         coef_of(job, K_DY)[c],         coef_of(job, K_XMU)[c],
                      coef_of(job, K_CONST)[c], coef_of(job, K_RELU_SCALE)[c], coef_of(job, K_RELU_SHIFT)[c]};
}

/* Channels-last loops read the coefficients converted once per channel: those of
 * channels c0 .. c1. */
static void publish_cl_coefs(bn_job *job, int64_t c0, int64_t c1)
{
    job->ops->cl_set_coefs(job->mean, job->coef, c0, c1, job->dims.c, job->cl_coefs);
}

static double *partials_of(bn_job *job, int64_t c, int64_t b)
{
    return job->partials + (c * job->channel_blocks + b) * BN_PARTIALS;
}

/* One channel is contiguous whatever the layout; N rows of S values as NCHW
 * without channels would be, as channels-last without spatial extent would be. */
static bn_dims canonical_dims(bn_dims d)
{
    if (d.c == 1)
        return (bn_dims){1, 1, d.n * d.s, 0};
    if (d.s == 1)
        return (bn_dims){d.n, d.c, 1, 1};
    return d;
}

static void init_job(bn_job *job, bn_dtype dtype, bn_dims dims)
{
    dims = canonical_dims(dims);
    *job = (bn_job){.dtype = dtype, .ops = bn_block_ops_for(dtype), .dims = dims};
    const int64_t rows = dims.n * dims.s;
    if (rows == 0 || dims.c == 0)
        return;
    if (dims.channels_last) {
        const int64_t rows_for_cache = dims.c >= BN_BLOCK_ELEMS ? 1 : BN_BLOCK_ELEMS / dims.c;
        const int64_t rows_for_memory = (rows + BN_CL_MAX_BLOCKS - 1) / BN_CL_MAX_BLOCKS;
        job->rows_per_block = rows_for_cache > rows_for_memory ? rows_for_cache : rows_for_memory;
        job->channel_blocks = (rows + job->rows_per_block - 1) / job->rows_per_block;
        return;
    }
    if (dims.s >= BN_BLOCK_ELEMS) {
        job->rows_per_block = 1;
        job->blocks_per_row = (dims.s + BN_BLOCK_ELEMS - 1) / BN_BLOCK_ELEMS;
        job->channel_blocks = dims.n * job->blocks_per_row;
    } else {
        job->rows_per_block = BN_BLOCK_ELEMS / dims.s;
        job->channel_blocks = (dims.n + job->rows_per_block - 1) / job->rows_per_block;
    }
}

static bn_block block_at(const bn_job *job, int64_t b)
{
    const bn_dims d = job->dims;
    if (d.channels_last) {
        int64_t r0 = b * job->rows_per_block, rows = d.n * d.s - r0;
        rows = rows < job->rows_per_block ? rows : job->rows_per_block;
        return (bn_block){r0 * d.c, rows, d.c};
    }
    if (job->blocks_per_row > 0) {
        int64_t n = b / job->blocks_per_row;
        int64_t s0 = (b % job->blocks_per_row) * BN_BLOCK_ELEMS;
        int64_t width = d.s - s0 < BN_BLOCK_ELEMS ? d.s - s0 : BN_BLOCK_ELEMS;
        return (bn_block){n * d.c * d.s + s0, 1, width};
    }
    int64_t n0 = b * job->rows_per_block;
    int64_t rows = d.n - n0 < job->rows_per_block ? d.n - n0 : job->rows_per_block;
    return (bn_block){n0 * d.c * d.s, rows, d.s};
}

/* Byte offset of a block: within channel c for NCHW, of the array for channels-last. */
static int64_t block_bytes(const bn_job *job, int64_t c, const bn_block *blk)
{
    const int64_t channel_start = job->dims.channels_last ? 0 : c * job->dims.s;
    return (channel_start + blk->offset) * (int64_t)bn_dtype_size(job->dtype);
}

/* ---- schedules ---- */

#if defined(__GNUC__)
/* Every line the row touches: one that does not start a line reaches into one more
 * than row_bytes / 64 (a 98-byte float16 row of 7 x 7 often into three). */
static void prefetch_row(const char *row, int64_t row_bytes)
{
    const uintptr_t end = (uintptr_t)row + (uintptr_t)row_bytes;
    for (uintptr_t line = (uintptr_t)row & ~(uintptr_t)63; line < end; line += 64)
        __builtin_prefetch((const void *)line, 0, 3);
}
#endif

/* Asks for the first block of channel c (x, and dy for backward) to be brought
 * into cache while the current channel is computed. */
static void prefetch_channel(const bn_job *job, int64_t c)
{
#if defined(__GNUC__)
    const int64_t elem = (int64_t)bn_dtype_size(job->dtype), row_bytes = job->dims.s * elem;
    if (row_bytes > BN_SHORT_ROW_BYTES)
        return;
    const bn_block blk = block_at(job, 0);
    const int64_t start = block_bytes(job, c, &blk), stride = job->dims.c * job->dims.s * elem;
    for (int64_t r = 0; r < blk.rows; r++) {
        prefetch_row(job->x + start + r * stride, row_bytes);
        if (job->dy)
            prefetch_row(job->dy + start + r * stride, row_bytes);
    }
#else
    (void)job;
    (void)c;
#endif
}

static void channel_task(void *ctx, int64_t c)
{
    bn_job *job = ctx;
    if (job->prepare)
        job->prepare(job, c);
    if (job->gather)
        for (int64_t b = 0; b < job->channel_blocks; b++)
            job->gather(job, c, b);
    job->reduce(job, c);
    if (job->in_memory_order)
        publish_cl_coefs(job, c, c + 1);
    else if (job->apply)
        for (int64_t b = job->channel_blocks - 1; b >= 0; b--)
            job->apply(job, c, b);
}

/* A run of consecutive channels, each prefetched BN_PREFETCH_AHEAD channels before
 * it is computed. */
static void channel_run_task(void *ctx, int64_t run)
{
    bn_job *job = ctx;
    const int64_t first = run * job->channels_per_run;
    const int64_t end = first + job->channels_per_run < job->dims.c ? first + job->channels_per_run : job->dims.c;
    for (int64_t c = first; c < end && c < first + BN_PREFETCH_AHEAD; c++)
        prefetch_channel(job, c);
    for (int64_t c = first; c < end; c++) {
        if (c + BN_PREFETCH_AHEAD < end)
            prefetch_channel(job, c + BN_PREFETCH_AHEAD);
        channel_task(job, c);
    }
}

/* Task t of a pool run over blocks: (channel, block) for NCHW, block for channels-last. */
static void gather_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    job->gather(job, t / job->channel_blocks, t % job->channel_blocks);
}

/* Task t of a pool run over channels: the BN_CHANNEL_RUN channels from t * BN_CHANNEL_RUN
 * on, whose coefficient vectors are then converted in one go. */
static void channel_step_task(bn_job *job, bn_channel_step step, int64_t t)
{
    const int64_t c0 = t * BN_CHANNEL_RUN, c1 = c0 + BN_CHANNEL_RUN < job->dims.c ? c0 + BN_CHANNEL_RUN : job->dims.c;
    for (int64_t c = c0; c < c1; c++)
        step(job, c);
    if (job->cl_coefs)
        publish_cl_coefs(job, c0, c1);
}

static void prepare_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    channel_step_task(job, job->prepare, t);
}

static void reduce_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    channel_step_task(job, job->reduce, t);
}

static void apply_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    job->apply(job, t / job->channel_blocks, t % job->channel_blocks);
}

/* Task t of an NCHW apply in memory order: rows_per_block (BN_BLOCK_ELEMS elements'
 * worth) consecutive rows, row q being channel q % C of sample q / C. */
static void apply_in_memory_order_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    const bn_dims d = job->dims;
    const int64_t first = t * job->rows_per_block, rows = d.n * d.c;
    const int64_t count = first + job->rows_per_block < rows ? job->rows_per_block : rows - first;
    job->ops->output_rows(job->x, job->dy, job->out, first, count, d.s, d.c, job->cl_coefs, job->terms, job->stream);
}

/* The output is written past the cache when it cannot stay there next to the input
 * (cache.h), except for NCHW rows of at most BN_SHORT_ROW_BYTES. A short row begins
 * and ends in partial lines written through the cache anyway, and its streamed
 * lines save little (measured when each row's call ended with a fence that waits for
 * them: 2 threads, 32 MiB L3, eval forward streamed against cached,
 * 128 x 2048 x 7 x 7 float32 120 against 24 ms, 32 x 1024 x 14 x 14 float32 15
 * against 9 ms). float16 streams too since bn_stream_line reads its line in the
 * halves the narrowing stored (32 x 64 x 112 x 112 float16 eval, 2 threads: 10.1
 * against 3.4 ms). */
static int streams_output(const bn_job *job)
{
    const bn_dims d = job->dims;
    const int64_t elem = (int64_t)bn_dtype_size(job->dtype);
    if (job->out == NULL || (!d.channels_last && d.s * elem <= BN_SHORT_ROW_BYTES))
        return 0;
    const int64_t arrays = 2 + (job->dy != NULL); /* x and the output, and dy */
    return d.n * d.c * d.s * elem * arrays > bn_stream_min_bytes();
}

/* NCHW outputs go in memory order (apply_in_memory_order_task): always for an eval
 * forward, which reads x once whatever the order; after a gather for rows of at
 * most BN_SCATTERED_ROW_BYTES, where writing a channel's rows C * S apart while they
 * are in cache costs more than reading the input again in one stream. 2 threads,
 * by channel against in memory order: 32 x 2048 x 7 x 7 float32 training forward
 * 2.6 against 1.3 ms and 128 x 2048 x 7 x 7 float32 backward 16.1 against 11.9 ms,
 * but 32 x 512 x 28 x 28 float16 backward (1568-byte rows) 5.0 against 6.9 ms. */
static int in_memory_order(const bn_job *job)
{
    const bn_dims d = job->dims;
    if (d.channels_last || job->apply == NULL)
        return 0;
    return job->gather == NULL || d.s * (int64_t)bn_dtype_size(job->dtype) <= BN_SCATTERED_ROW_BYTES;
}

/* Bytes rounded up to whole 64-byte lines, so that the parts of a job's workspace
 * share no line. */
static size_t line_bytes(int64_t count, size_t size) { return ((size_t)count * size + 63) & ~(size_t)63; }

static bn_status run_job(bn_job *job)
{
    const bn_dims d = job->dims;
    const int64_t elements = d.n * d.c * d.s;
    const int64_t channels_last = d.channels_last;
    const int64_t nblocks = channels_last ? job->channel_blocks : d.c * job->channel_blocks;
    job->in_memory_order = in_memory_order(job);
    job->stream = streams_output(job);
    /* the workspace: coef, then what the steps use of partials, scratch and cl_coefs */
    const size_t coef_bytes = line_bytes(d.c * BN_COEFS, sizeof(double));
    const size_t partial_bytes = job->gather ? line_bytes(d.c * job->channel_blocks * BN_PARTIALS, sizeof(double)) : 0;
    const size_t scratch_bytes = job->gather && channels_last ? line_bytes(nblocks * d.c * BN_PARTIALS, sizeof(double)) : 0;
    const size_t cl_coef_bytes = channels_last || job->in_memory_order ? line_bytes(d.c * BN_CL_COEFS, sizeof(double)) : 0;
    char *workspace = bn_workspace_take(coef_bytes + partial_bytes + scratch_bytes + cl_coef_bytes);
    if (workspace == NULL)
        return BN_NO_MEMORY;
    job->coef = (double *)workspace;
    job->partials = partial_bytes ? (double *)(workspace + coef_bytes) : NULL;
    job->scratch = scratch_bytes ? (double *)(workspace + coef_bytes + partial_bytes) : NULL;
    job->cl_coefs = cl_coef_bytes ? workspace + coef_bytes + partial_bytes + scratch_bytes : NULL;
    /* zeroed: a backward's prepare step publishes coefficients its reduce sets later */
    memset(job->coef, 0, coef_bytes);
    const int64_t runs = (int64_t)BN_CHANNELS_PER_THREAD * bn_pool_get_threads();
    const int64_t channel_runs = (d.c + BN_CHANNEL_RUN - 1) / BN_CHANNEL_RUN;
    if (!channels_last && d.c >= runs && job->gather) {
        job->channels_per_run = (d.c + runs - 1) / runs;
        bn_pool_run((d.c + job->channels_per_run - 1) / job->channels_per_run, channel_run_task, job, elements);
    } else {
        if (job->prepare)
            bn_pool_run(channel_runs, prepare_task, job, d.c);
        if (job->gather)
            bn_pool_run(nblocks, gather_task, job, elements);
        bn_pool_run(channel_runs, reduce_task, job, d.c * job->channel_blocks);
        if (job->apply && !job->in_memory_order)
            bn_pool_run(nblocks, apply_task, job, elements);
    }
    if (job->in_memory_order)
        bn_pool_run((d.n * d.c + job->rows_per_block - 1) / job->rows_per_block, apply_in_memory_order_task, job,
                    elements);
    bn_workspace_give(workspace);
    return BN_OK;
}

/* ---- gather: statistics ---- */

/* A block's count, mean and centred sum of squares from sums of deviations d from
 * `shift`: mean = shift + sum(d) / n, M2 = sum(d^2) - sum(d)^2 / n. With the
 * block's own mean as the shift, sum(d) only corrects for its rounding. */
static void store_moments(double *p, double count, double shift, double sum_d, double sum_d2)
{
    p[0] = count;
    /* an infinite mean (two-pass with an infinity in the block) makes the deviations NaN */
    p[1] = isfinite(shift) ? shift + sum_d / count : shift;
    p[2] = sum_d2 - sum_d * sum_d / count;
}

/* Float-lane moments of a block (see lane_shifted_sums) are kept when finite and
 * when the shift lies within sqrt(BN_SHIFT_SPREAD) standard deviations of the block's
 * mean: n (mean - shift)^2 = sum_d^2 / n <= BN_SHIFT_SPREAD * M2. Then the sum of
 * squares is at most 1 + BN_SHIFT_SPREAD times the centred one, which bounds the
 * error of M2 relative to M2 itself (docs/numerics.md); otherwise the block is
 * summed again in double. */
#define BN_SHIFT_SPREAD 8.0
/* The shift of float32 and float16 blocks: the mean of up to this many values at the
 * block's start (NCHW: of its first row; channels-last: of its first rows, per
 * channel), an estimate of the block's mean that a single outlier moves little. */
#define BN_SHIFT_SAMPLES 16

static int lane_moments_kept(double count, double sum_d, double sum_d2)
{
    const double offset = sum_d * sum_d / count;
    return isfinite(sum_d2) && offset <= BN_SHIFT_SPREAD * (sum_d2 - offset);
}

/* The shift of a block: the mean of `count` values whose sum is `sum`, rounded to the
 * type the float lanes compute in (so that both loops subtract the same shift); 0
 * if not finite. */
static double shift_of_sum(double sum, int64_t count)
{
    const double shift = (double)(float)(sum / (double)count);
    return isfinite(shift) ? shift : 0.0;
}

/* the shift of `count` contiguous values */
static double shift_estimate(bn_dtype dtype, const char *x, int64_t count)
{
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++)
        sum += bn_load(dtype, x, i);
    return shift_of_sum(sum, count);
}

/* float64 data: two passes, the mean and then the centred sums. float32 and
 * float16 data: one pass of sums shifted by an estimate of the block's mean, in float
 * lanes where the block allows it (lane_moments_kept), else with deviations formed
 * in double (see shifted_sums). */
static void gather_moments(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const char *x = job->x + block_bytes(job, c, &blk);
    const int64_t stride = job->dims.c * job->dims.s;
    const double count = (double)(blk.rows * blk.width);
    double shift, sum_d, sum_d2;
    if (job->dtype == BN_FLOAT64) {
        shift = job->ops->sum(x, blk.rows, blk.width, stride) / count;
        job->ops->shifted_sums(x, blk.rows, blk.width, stride, shift, &sum_d, &sum_d2);
    } else {
        shift = shift_estimate(job->dtype, x, blk.width < BN_SHIFT_SAMPLES ? blk.width : BN_SHIFT_SAMPLES);
        job->ops->lane_shifted_sums(x, blk.rows, blk.width, stride, shift, &sum_d, &sum_d2);
        if (!lane_moments_kept(count, sum_d, sum_d2))
            job->ops->shifted_sums(x, blk.rows, blk.width, stride, shift, &sum_d, &sum_d2);
    }
    store_moments(partials_of(job, c, b), count, shift, sum_d, sum_d2);
}

static void gather_moments_cl(bn_job *job, int64_t unused, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const char *x = job->x + block_bytes(job, 0, &blk);
    const int64_t channels = job->dims.c;
    const double count = (double)blk.rows;
    double *shift = job->scratch + b * BN_PARTIALS * channels, *sum_d = shift + channels, *sum_d2 = sum_d + channels;
    if (job->dtype == BN_FLOAT64) {
        job->ops->cl_sum(x, blk.rows, channels, shift);
        for (int64_t c = 0; c < channels; c++)
            shift[c] /= count;
        job->ops->cl_shifted_sums(x, blk.rows, channels, shift, sum_d, sum_d2);
    } else {
        /* each channel's sum in row order, as vectors over channels (strided scalar
         * loads were a third of 32x2048x7x7 float16 statistics, perf) */
        const int64_t samples = blk.rows < BN_SHIFT_SAMPLES ? blk.rows : BN_SHIFT_SAMPLES;
        job->ops->cl_sum(x, samples, channels, shift);
        for (int64_t c = 0; c < channels; c++)
            shift[c] = shift_of_sum(shift[c], samples);
        job->ops->cl_lane_shifted_sums(x, blk.rows, channels, shift, sum_d, sum_d2);
        int64_t c = 0;
        while (c < channels && lane_moments_kept(count, sum_d[c], sum_d2[c]))
            c++;
        if (c < channels)
            job->ops->cl_shifted_sums(x, blk.rows, channels, shift, sum_d, sum_d2);
    }
    for (int64_t c = 0; c < channels; c++)
        store_moments(partials_of(job, c, b), count, shift[c], sum_d[c], sum_d2[c]);
}

/* ---- gather: gradient sums ---- */

static void gather_grad_sums(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, c, &blk);
    const bn_coefs k = coefs_of_channel(job, c);
    double *p = partials_of(job, c, b);
    const int64_t stride = job->dims.c * job->dims.s;
    if (job->ops->lane_grad_sums) {
        job->ops->lane_grad_sums(job->x + off, job->dy + off, blk.rows, blk.width, stride, &k, job->relu, &p[0], &p[1]);
        if (isfinite(p[0]) && isfinite(p[1]))
            return;
    }
    /* float64 data, or a float lane that overflowed (or data that is not finite) */
    job->ops->grad_sums(job->x + off, job->dy + off, blk.rows, blk.width, stride, &k, job->relu, &p[0], &p[1]);
}

static void gather_grad_sums_cl(bn_job *job, int64_t unused, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, 0, &blk);
    const int64_t channels = job->dims.c;
    double *sum_dy = job->scratch + b * BN_PARTIALS * channels, *sum_dy_xmu = sum_dy + channels;
    int64_t c = 0;
    if (job->ops->cl_lane_grad_sums) {
        job->ops->cl_lane_grad_sums(job->x + off, job->dy + off, blk.rows, channels, job->mean, job->cl_coefs,
                                    job->relu, sum_dy, sum_dy_xmu);
        while (c < channels && isfinite(sum_dy[c]) && isfinite(sum_dy_xmu[c]))
            c++;
    }
    if (c < channels) /* as in gather_grad_sums */
        job->ops->cl_grad_sums(job->x + off, job->dy + off, blk.rows, channels, job->mean, job->cl_coefs, job->relu,
                               sum_dy, sum_dy_xmu);
    for (c = 0; c < channels; c++) {
        double *p = partials_of(job, c, b);
        p[0] = sum_dy[c];
        p[1] = sum_dy_xmu[c];
    }
}

/* ---- reduce ---- */

/* Forward coefficients: y = gamma * invstd * (x - mean) + beta; the same affine map
 * is the pre-activation a ReLU backward masks by. */
static void set_affine_coef(bn_job *job, int64_t c)
{
    const bn_dtype params = bn_param_dtype(job->dtype);
    coef_of(job, K_DY)[c] = 0.0;
    coef_of(job, K_XMU)[c] = coef_of(job, K_RELU_SCALE)[c] = load_or(params, job->gamma, c, 1.0) * job->invstd[c];
    coef_of(job, K_CONST)[c] = coef_of(job, K_RELU_SHIFT)[c] = load_or(params, job->beta, c, 0.0);
}

/* Chan et al.'s pairwise update of (count, mean, m2) by a part's (n, part_mean,
 * part_m2); an empty part changes nothing. Blocks and ranks merge through it. */
static void chan_update(double *count, double *mean, double *m2, double n, double part_mean, double part_m2)
{
    if (n == 0.0)
        return;
    const double total = *count + n;
    const double delta = part_mean - *mean;
    /* a weighted sum where a mean is infinite, as a plain sum would give */
    *mean = isfinite(delta) ? *mean + delta * (n / total) : (*count * *mean + n * part_mean) / total;
    *m2 += part_m2 + delta * delta * (*count * n / total);
    *count = total;
}

/* The blocks of channel c merged in order. A constant channel has every block mean
 * equal to the constant and stays exact. */
static void merge_block_moments(bn_job *job, int64_t c, double *mean, double *m2)
{
    double count = 0.0;
    *mean = *m2 = 0.0;
    for (int64_t b = 0; b < job->channel_blocks; b++) {
        const double *p = partials_of(job, c, b);
        chan_update(&count, mean, m2, p[0], p[1], p[2]);
    }
}

static void reduce_moments(bn_job *job, int64_t c)
{
    double mean, m2;
    merge_block_moments(job, c, &mean, &m2);
    const double count = (double)(job->dims.n * job->dims.s);
    job->mean[c] = mean;
    job->var[c] = m2 / count;
    job->invstd[c] = 1.0 / sqrt(job->var[c] + job->eps);
    set_affine_coef(job, c);
}

/* The forward's affine map, by which a ReLU backward masks dy. */
static void set_relu_coef(bn_job *job, int64_t c)
{
    const bn_dtype params = bn_param_dtype(job->dtype);
    coef_of(job, K_RELU_SCALE)[c] = load_or(params, job->gamma, c, 1.0) * job->invstd[c];
    coef_of(job, K_RELU_SHIFT)[c] = load_or(params, job->beta, c, 0.0);
}

/* The gradient sums of channel c, block by block in order. */
static void sum_grad_partials(bn_job *job, int64_t c, double *sum_dy, double *sum_dy_xmu)
{
    *sum_dy = *sum_dy_xmu = 0.0;
    for (int64_t b = 0; b < job->channel_blocks; b++) {
        const double *p = partials_of(job, c, b);
        *sum_dy += p[0];
        *sum_dy_xmu += p[1];
    }
}

/* dx = gamma * invstd * (dy' - sum(dy') / M - xhat * sum(dy * xhat) / M) with batch
 * statistics, dx = gamma * invstd * dy' with constant ones; xhat = (x - mean) * invstd,
 * dy' = dy masked by the forward's ReLU if there was one: the coefficients from the
 * sums over the M = `count` values of the channel. */
static void set_grad_coef(bn_job *job, int64_t c, double sum_dy, double sum_dy_xmu, double count)
{
    const double invstd = job->invstd[c];
    const double k_dy = load_or(bn_param_dtype(job->dtype), job->gamma, c, 1.0) * invstd;
    coef_of(job, K_DY)[c] = k_dy;
    coef_of(job, K_XMU)[c] = job->batch_stats ? -k_dy * invstd * invstd * sum_dy_xmu / count : 0.0;
    coef_of(job, K_CONST)[c] = job->batch_stats ? -k_dy * sum_dy / count : 0.0;
}

/* The sums over this job's blocks, the parameter gradients and dx's coefficients. */
static void reduce_grad(bn_job *job, int64_t c)
{
    double sum_dy, sum_dy_xmu;
    sum_grad_partials(job, c, &sum_dy, &sum_dy_xmu);
    const bn_dtype params = bn_param_dtype(job->dtype);
    if (job->dbeta)
        bn_store(params, job->dbeta, c, sum_dy);
    if (job->dgamma)
        bn_store(params, job->dgamma, c, sum_dy_xmu * job->invstd[c]);
    set_grad_coef(job, c, sum_dy, sum_dy_xmu, (double)(job->dims.n * job->dims.s));
}

/* ---- apply ---- */

static void apply_output(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, c, &blk);
    const bn_coefs k = coefs_of_channel(job, c);
    job->ops->output(job->x + off, job->dy ? job->dy + off : NULL, job->out + off, blk.rows, blk.width,
                     job->dims.c * job->dims.s, &k, job->terms, job->stream);
}

static void apply_output_cl(bn_job *job, int64_t unused, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, 0, &blk);
    job->ops->cl_output(job->x + off, job->dy ? job->dy + off : NULL, job->out + off, blk.rows, job->dims.c,
                        job->cl_coefs, job->terms, job->stream);
}

static void set_steps(bn_job *job, bn_block_step gather, bn_block_step gather_cl, bn_channel_step reduce)
{
    const int cl = job->dims.channels_last;
    job->gather = cl ? gather_cl : gather;
    job->reduce = reduce;
    job->apply = cl ? apply_output_cl : apply_output;
}

/* The arrays of a call; the statistics are written only by the schedules that compute
 * them (training forward, local moments), so read-only ones are cast here once. */
static void set_operands(bn_job *job, const void *x, const void *dy, void *out, const void *gamma, const void *beta,
                         const double *mean, const double *invstd)
{
    job->x = x;
    job->dy = dy;
    job->out = out;
    job->gamma = gamma;
    job->beta = beta;
    job->mean = (double *)mean;
    job->invstd = (double *)invstd;
}

/* ---- public kernels ---- */

bn_status bn_forward_train(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                           const void *beta, double eps, int relu, double *mean, double *var, double *invstd)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0) {
        for (int64_t c = 0; c < dims.c; c++)
            mean[c] = var[c] = invstd[c] = NAN;
        return BN_OK;
    }
    set_steps(&job, gather_moments, gather_moments_cl, reduce_moments);
    job.terms = BN_USE_X | (relu ? BN_RELU_CLAMP : 0);
    set_operands(&job, x, NULL, y, gamma, beta, mean, invstd);
    job.eps = eps;
    job.var = var;
    return run_job(&job);
}

bn_status bn_forward_eval(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                          const void *beta, const double *mean, const double *invstd, int relu)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0)
        return BN_OK;
    set_steps(&job, NULL, NULL, set_affine_coef);
    job.terms = BN_USE_X | (relu ? BN_RELU_CLAMP : 0);
    set_operands(&job, x, NULL, y, gamma, beta, mean, invstd);
    return run_job(&job);
}

bn_status bn_backward(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, void *dx,
                      const void *gamma, const void *beta, const double *mean, const double *invstd,
                      int batch_stats, int relu, void *dgamma, void *dbeta)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0) {
        for (int64_t c = 0; c < dims.c; c++) {
            if (dgamma)
                bn_store(bn_param_dtype(dtype), dgamma, c, 0.0);
            if (dbeta)
                bn_store(bn_param_dtype(dtype), dbeta, c, 0.0);
        }
        return BN_OK;
    }
    set_steps(&job, gather_grad_sums, gather_grad_sums_cl, reduce_grad);
    job.prepare = set_relu_coef;
    /* with constant statistics dx does not depend on x, except through a ReLU mask */
    job.terms = (batch_stats ? BN_USE_X : 0) | BN_USE_DY | (relu ? BN_RELU_MASK : 0);
    job.relu = relu;
    set_operands(&job, x, dy, dx, gamma, beta, mean, invstd);
    job.batch_stats = batch_stats;
    job.dgamma = dgamma;
    job.dbeta = dbeta;
    return run_job(&job);
}

/* ---- running statistics ---- */

void bn_update_running(bn_dtype dtype, int64_t channels, void *running_mean, void *running_var,
                       const double *mean, const double *var, int64_t count, double momentum)
{
    const double unbias = (double)count / (double)(count - 1);
    dtype = bn_param_dtype(dtype);
    for (int64_t c = 0; c < channels; c++) {
        double rm = bn_load(dtype, running_mean, c), rv = bn_load(dtype, running_var, c);
        bn_store(dtype, running_mean, c, (1.0 - momentum) * rm + momentum * mean[c]);
        bn_store(dtype, running_var, c, (1.0 - momentum) * rv + momentum * var[c] * unbias);
    }
}

void bn_stats_from_running(bn_dtype dtype, int64_t channels, const void *running_mean,
                           const void *running_var, double eps, double *mean, double *invstd)
{
    dtype = bn_param_dtype(dtype);
    for (int64_t c = 0; c < channels; c++) {
        mean[c] = bn_load(dtype, running_mean, c);
        invstd[c] = 1.0 / sqrt(bn_load(dtype, running_var, c) + eps);
    }
}

/* ---- split phases (see bnorm_kernels.h) ---- */

/* The channel's blocks merged into the moments rows: job->mean is the mean row,
 * job->var the M2 row. */
static void reduce_local_moments(bn_job *job, int64_t c)
{
    merge_block_moments(job, c, &job->mean[c], &job->var[c]);
}

bn_status bn_local_moments(bn_dtype dtype, bn_dims dims, const void *x, double *moments)
{
    const int64_t channels = dims.c, count = dims.n * dims.s;
    for (int64_t c = 0; c < channels; c++) {
        moments[c] = (double)count;
        moments[channels + c] = moments[2 * channels + c] = 0.0;
    }
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0)
        return BN_OK;
    set_steps(&job, gather_moments, gather_moments_cl, reduce_local_moments);
    job.apply = NULL;
    job.x = x;
    job.mean = moments + channels;
    job.var = moments + 2 * channels;
    return run_job(&job);
}

void bn_merge_moments(int64_t parts, int64_t channels, const double *moments, double eps, double *count,
                      double *mean, double *var, double *invstd)
{
    for (int64_t c = 0; c < channels; c++) {
        double n = 0.0, m = 0.0, m2 = 0.0;
        for (int64_t p = 0; p < parts; p++) {
            const double *part = moments + p * 3 * channels;
            chan_update(&n, &m, &m2, part[c], part[channels + c], part[2 * channels + c]);
        }
        count[c] = n;
        mean[c] = n > 0.0 ? m : NAN;
        var[c] = n > 0.0 ? m2 / n : NAN;
        invstd[c] = 1.0 / sqrt(var[c] + eps);
    }
}

static void reduce_grad_sums(bn_job *job, int64_t c)
{
    sum_grad_partials(job, c, &job->sum_dy[c], &job->sum_dy_xmu[c]);
}

bn_status bn_grad_sums(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, const void *gamma,
                       const void *beta, const double *mean, const double *invstd, int relu, double *sum_dy,
                       double *sum_dy_xmu)
{
    for (int64_t c = 0; c < dims.c; c++)
        sum_dy[c] = sum_dy_xmu[c] = 0.0;
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0)
        return BN_OK;
    set_steps(&job, gather_grad_sums, gather_grad_sums_cl, reduce_grad_sums);
    job.apply = NULL;
    job.prepare = set_relu_coef;
    job.relu = relu;
    set_operands(&job, x, dy, NULL, gamma, beta, mean, invstd);
    job.sum_dy = sum_dy;
    job.sum_dy_xmu = sum_dy_xmu;
    return run_job(&job);
}

/* Nothing to gather: the sums are given. A gather step nonetheless, since the
 * schedules without one are those of an eval forward, which read no dy. */
static void gather_nothing(bn_job *job, int64_t c, int64_t b) {}

static void reduce_grad_from_sums(bn_job *job, int64_t c)
{
    set_relu_coef(job, c);
    set_grad_coef(job, c, job->sum_dy[c], job->sum_dy_xmu[c], job->count);
}

bn_status bn_backward_from_sums(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, void *dx,
                                const void *gamma, const void *beta, const double *mean, const double *invstd,
                                const double *sum_dy, const double *sum_dy_xmu, int64_t count, int relu)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.channel_blocks == 0)
        return BN_OK;
    set_steps(&job, gather_nothing, gather_nothing, reduce_grad_from_sums);
    job.terms = BN_USE_X | BN_USE_DY | (relu ? BN_RELU_MASK : 0);
    job.relu = relu;
    job.batch_stats = 1;
    set_operands(&job, x, dy, dx, gamma, beta, mean, invstd);
    job.sum_dy = (double *)sum_dy;
    job.sum_dy_xmu = (double *)sum_dy_xmu;
    job.count = (double)count;
    return run_job(&job);
}

/*
 * Scheduling of the batch-norm kernels over channels and blocks.
 *
 * Each channel (N rows of S elements, rows C * S apart) is cut into blocks of about
 * BN_BLOCK_ELEMS elements: whole rows when S is small, pieces of one row when S is
 * large. A kernel is three steps:
 *   gather(c, b)  reads block b of channel c and writes its partial results;
 *   reduce(c)     merges the partials of channel c in block order;
 *   apply(c, b)   writes block b of the output using the merged results.
 * The block boundaries and the merge order depend only on the shape, so the result
 * is the same for every thread count and schedule.
 *
 * Two schedules give the same bits:
 *   - by channel (many channels): one task runs gather, reduce and apply for a whole
 *     channel, applying the blocks in reverse so the most recently read ones are
 *     still in cache; memory sees about one read of x per pass over the channel;
 *   - by block (few channels, so that every thread has work): three pool runs,
 *     gather over all blocks, reduce over channels, apply over all blocks.
 */
#include "bn_kernels.h"

#include <math.h>
#include <stdlib.h>

#include "bn_dispatch.h"
#include "bn_pool.h"

/* Elements per block: two passes over a block run from the core's private cache. */
#define BN_BLOCK_ELEMS 16384
/* By-channel scheduling when there are at least this many channels per thread. */
#define BN_CHANNELS_PER_THREAD 4
/* Outputs at least this large are written past the cache: they are far larger
 * than the caches, and the input still to be read should stay there. */
#define BN_STREAM_MIN_BYTES (16 << 20)
/* Doubles of partial results per block. */
#define BN_PARTIALS 3

typedef struct bn_job bn_job;
typedef void (*bn_block_step)(bn_job *job, int64_t c, int64_t b);
typedef void (*bn_channel_step)(bn_job *job, int64_t c);

typedef struct {
    int64_t offset; /* elements from the channel's first element */
    int64_t rows, width;
} bn_block;

struct bn_job {
    bn_dtype dtype;
    const bn_block_ops *ops;
    bn_dims dims;
    int64_t blocks_per_channel;
    int64_t rows_per_block;  /* when a block is whole rows */
    int64_t blocks_per_row;  /* when a block is a piece of a row */
    bn_block_step gather;
    bn_channel_step reduce;
    bn_block_step apply;
    double *partials;        /* BN_PARTIALS per block, channel-major */
    double *coef;            /* 3 per channel, written by reduce, read by apply */
    /* operands */
    const char *x, *dy;
    char *out;
    const void *gamma, *beta;
    double eps;
    double *mean, *var, *invstd;
    int batch_stats;
    void *dgamma, *dbeta;
    int stream; /* write the output with non-temporal stores */
};

static size_t elem_size(bn_dtype dtype) { return dtype == BN_FLOAT32 ? sizeof(float) : sizeof(double); }

static double load(bn_dtype dtype, const void *p, int64_t i)
{
    return dtype == BN_FLOAT32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static void store(bn_dtype dtype, void *p, int64_t i, double v)
{
    if (dtype == BN_FLOAT32)
        ((float *)p)[i] = (float)v;
    else
        ((double *)p)[i] = v;
}

static double load_or(bn_dtype dtype, const void *p, int64_t i, double fallback)
{
    return p == NULL ? fallback : load(dtype, p, i);
}

static void init_job(bn_job *job, bn_dtype dtype, bn_dims dims)
{
    *job = (bn_job){.dtype = dtype, .ops = bn_block_ops_for(dtype), .dims = dims};
    job->stream = dims.n * dims.c * dims.s * (int64_t)elem_size(dtype) >= BN_STREAM_MIN_BYTES;
    if (dims.n == 0 || dims.s == 0)
        return;
    if (dims.s >= BN_BLOCK_ELEMS) {
        job->rows_per_block = 1;
        job->blocks_per_row = (dims.s + BN_BLOCK_ELEMS - 1) / BN_BLOCK_ELEMS;
        job->blocks_per_channel = dims.n * job->blocks_per_row;
    } else {
        job->rows_per_block = BN_BLOCK_ELEMS / dims.s;
        job->blocks_per_row = 0;
        job->blocks_per_channel = (dims.n + job->rows_per_block - 1) / job->rows_per_block;
    }
}

static bn_block block_at(const bn_job *job, int64_t b)
{
    const bn_dims d = job->dims;
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

/* Byte offset of block b of channel c. */
static int64_t block_bytes(const bn_job *job, int64_t c, const bn_block *blk)
{
    return (c * job->dims.s + blk->offset) * (int64_t)elem_size(job->dtype);
}

static double *partials_of(bn_job *job, int64_t c, int64_t b)
{
    return job->partials + (c * job->blocks_per_channel + b) * BN_PARTIALS;
}

static void channel_task(void *ctx, int64_t c)
{
    bn_job *job = ctx;
    if (job->gather)
        for (int64_t b = 0; b < job->blocks_per_channel; b++)
            job->gather(job, c, b);
    if (job->reduce)
        job->reduce(job, c);
    if (job->apply)
        for (int64_t b = job->blocks_per_channel - 1; b >= 0; b--)
            job->apply(job, c, b);
}

static void gather_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    job->gather(job, t / job->blocks_per_channel, t % job->blocks_per_channel);
}

static void reduce_task(void *ctx, int64_t c)
{
    bn_job *job = ctx;
    job->reduce(job, c);
}

static void apply_task(void *ctx, int64_t t)
{
    bn_job *job = ctx;
    job->apply(job, t / job->blocks_per_channel, t % job->blocks_per_channel);
}

static bn_status run_job(bn_job *job)
{
    const bn_dims d = job->dims;
    const int64_t work = d.n * d.c * d.s;
    const int64_t nblocks = d.c * job->blocks_per_channel;
    job->partials = malloc((size_t)(nblocks > 0 ? nblocks : 1) * BN_PARTIALS * sizeof(double));
    job->coef = malloc((size_t)(d.c > 0 ? d.c : 1) * 3 * sizeof(double));
    if (job->partials == NULL || job->coef == NULL) {
        free(job->partials);
        free(job->coef);
        return BN_NO_MEMORY;
    }
    if (d.c >= (int64_t)BN_CHANNELS_PER_THREAD * bn_pool_get_threads()) {
        bn_pool_run(d.c, channel_task, job, work);
    } else {
        if (job->gather)
            bn_pool_run(nblocks, gather_task, job, work);
        if (job->reduce)
            bn_pool_run(d.c, reduce_task, job, 0);
        if (job->apply)
            bn_pool_run(nblocks, apply_task, job, work);
    }
    free(job->partials);
    free(job->coef);
    return BN_OK;
}

/* Forward coefficients: y = gamma * invstd * (x - mean) + beta. */
static void set_affine_coef(bn_job *job, int64_t c)
{
    job->coef[3 * c] = 0.0;
    job->coef[3 * c + 1] = load_or(job->dtype, job->gamma, c, 1.0) * job->invstd[c];
    job->coef[3 * c + 2] = load_or(job->dtype, job->beta, c, 0.0);
}

/* ---- training forward ---------------------------------------------------------- */

/* Two passes over a cached block: the mean, then the centred sum of squares, with
 * the sum of deviations correcting both for the rounding of the first mean. */
static void gather_moments(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const char *x = job->x + block_bytes(job, c, &blk);
    const int64_t stride = job->dims.c * job->dims.s;
    const double count = (double)(blk.rows * blk.width);
    const double mean0 = job->ops->sum(x, blk.rows, blk.width, stride) / count;
    double sum_d, sum_d2;
    job->ops->centered(x, blk.rows, blk.width, stride, mean0, &sum_d, &sum_d2);
    double *p = partials_of(job, c, b);
    p[0] = count;
    p[1] = mean0 + sum_d / count;
    p[2] = sum_d2 - sum_d * sum_d / count;
}

/* Chan et al.'s pairwise update, block by block in order. A constant channel has
 * every block mean equal to the constant and stays exact. */
static void reduce_moments(bn_job *job, int64_t c)
{
    double count = 0.0, mean = 0.0, m2 = 0.0;
    for (int64_t b = 0; b < job->blocks_per_channel; b++) {
        const double *p = partials_of(job, c, b);
        const double total = count + p[0];
        const double delta = p[1] - mean;
        mean += delta * (p[0] / total);
        m2 += p[2] + delta * delta * (count * p[0] / total);
        count = total;
    }
    const double var = m2 / count;
    const double invstd = 1.0 / sqrt(var + job->eps);
    job->mean[c] = mean;
    job->var[c] = var;
    job->invstd[c] = invstd;
    set_affine_coef(job, c);
}

/* out = k_xmu * (x - mean) + k_const + k_dy * dy with the channel's coefficients. */
static void apply_linear(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, c, &blk);
    const double *k = job->coef + 3 * c;
    job->ops->linear(job->x + off, job->dy ? job->dy + off : NULL, job->out + off, blk.rows, blk.width,
                     job->dims.c * job->dims.s, job->mean[c], k[0], k[1], k[2], job->stream);
}

bn_status bn_forward_train(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                           const void *beta, double eps, double *mean, double *var, double *invstd)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.blocks_per_channel == 0) {
        for (int64_t c = 0; c < dims.c; c++)
            mean[c] = var[c] = invstd[c] = NAN;
        return BN_OK;
    }
    job.gather = gather_moments;
    job.reduce = reduce_moments;
    job.apply = apply_linear;
    job.x = x;
    job.out = y;
    job.gamma = gamma;
    job.beta = beta;
    job.eps = eps;
    job.mean = mean;
    job.var = var;
    job.invstd = invstd;
    return run_job(&job);
}

/* ---- forward with given statistics -------------------------------------------- */


bn_status bn_forward_eval(bn_dtype dtype, bn_dims dims, const void *x, void *y, const void *gamma,
                          const void *beta, const double *mean, const double *invstd)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.blocks_per_channel == 0)
        return BN_OK;
    job.reduce = set_affine_coef;
    job.apply = apply_linear;
    job.x = x;
    job.out = y;
    job.gamma = gamma;
    job.beta = beta;
    /* read-only here: the job's statistics pointers are shared with training */
    job.mean = (double *)mean;
    job.invstd = (double *)invstd;
    return run_job(&job);
}

/* ---- backward ------------------------------------------------------------------ */

static void gather_grad_sums(bn_job *job, int64_t c, int64_t b)
{
    const bn_block blk = block_at(job, b);
    const int64_t off = block_bytes(job, c, &blk);
    double *p = partials_of(job, c, b);
    job->ops->grad_sums(job->x + off, job->dy + off, blk.rows, blk.width, job->dims.c * job->dims.s,
                        job->mean[c], &p[0], &p[1]);
}

/* dx = gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M) with batch
 * statistics, dx = gamma * invstd * dy with constant ones; xhat = (x - mean) * invstd. */
static void reduce_grad(bn_job *job, int64_t c)
{
    double sum_dy = 0.0, sum_dy_xmu = 0.0;
    for (int64_t b = 0; b < job->blocks_per_channel; b++) {
        const double *p = partials_of(job, c, b);
        sum_dy += p[0];
        sum_dy_xmu += p[1];
    }
    const double invstd = job->invstd[c];
    const double count = (double)(job->dims.n * job->dims.s);
    const double k_dy = load_or(job->dtype, job->gamma, c, 1.0) * invstd;
    if (job->dbeta)
        store(job->dtype, job->dbeta, c, sum_dy);
    if (job->dgamma)
        store(job->dtype, job->dgamma, c, sum_dy_xmu * invstd);
    job->coef[3 * c] = k_dy;
    job->coef[3 * c + 1] = job->batch_stats ? -k_dy * invstd * invstd * sum_dy_xmu / count : 0.0;
    job->coef[3 * c + 2] = job->batch_stats ? -k_dy * sum_dy / count : 0.0;
}

bn_status bn_backward(bn_dtype dtype, bn_dims dims, const void *x, const void *dy, void *dx,
                      const void *gamma, const double *mean, const double *invstd, int batch_stats,
                      void *dgamma, void *dbeta)
{
    bn_job job;
    init_job(&job, dtype, dims);
    if (job.blocks_per_channel == 0) {
        for (int64_t c = 0; c < dims.c; c++) {
            if (dgamma)
                store(dtype, dgamma, c, 0.0);
            if (dbeta)
                store(dtype, dbeta, c, 0.0);
        }
        return BN_OK;
    }
    job.gather = gather_grad_sums;
    job.reduce = reduce_grad;
    job.apply = apply_linear;
    job.x = x;
    job.dy = dy;
    job.out = dx;
    job.gamma = gamma;
    job.mean = (double *)mean;
    job.invstd = (double *)invstd;
    job.batch_stats = batch_stats;
    job.dgamma = dgamma;
    job.dbeta = dbeta;
    return run_job(&job);
}

/* ---- running statistics -------------------------------------------------------- */

void bn_update_running(bn_dtype dtype, int64_t channels, void *running_mean, void *running_var,
                       const double *mean, const double *var, int64_t count, double momentum)
{
    const double unbias = (double)count / (double)(count - 1);
    for (int64_t c = 0; c < channels; c++) {
        double rm = load(dtype, running_mean, c), rv = load(dtype, running_var, c);
        store(dtype, running_mean, c, (1.0 - momentum) * rm + momentum * mean[c]);
        store(dtype, running_var, c, (1.0 - momentum) * rv + momentum * var[c] * unbias);
    }
}

void bn_stats_from_running(bn_dtype dtype, int64_t channels, const void *running_mean,
                           const void *running_var, double eps, double *mean, double *invstd)
{
    for (int64_t c = 0; c < channels; c++) {
        mean[c] = load(dtype, running_mean, c);
        invstd[c] = 1.0 / sqrt(load(dtype, running_var, c) + eps);
    }
}

/*
 * C tests of the kernel layer (src/kernels), no Python involved: training forward,
 * eval forward and backward for every dtype the build has, NCHW and channels-last,
 * odd sizes and row tails, against a plain double-precision reference below; and
 * bit-identical results for every thread count (1, 2, 3, 8) and every SIMD level
 * this CPU supports; the split phases on a batch cut into parts (some empty) against
 * the fused kernels. Prints the number of checks; exits 1 at the first failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnorm_kernels.h"
#include "dispatch.h"
#include "pool.h"

#include "check.h"

/* Relative rounding unit of a dtype, for the tolerances. */
static double unit(bn_dtype t) { return t == BN_FLOAT64 ? 0x1p-53 : t == BN_FLOAT32 ? 0x1p-24 : 0x1p-11; }

/* docs/numerics.md: what the float lanes of float32 and float16 statistics add to the
 * double bounds, relative to the standard deviation (mean) and the variance (var):
 * sqrt(1 + T)(K + 0.01) u and ((1 + T)(3K + 4) + 2 sqrt(1 + T)(K + 0.01) + 1) u, with
 * K = BN_STRETCH = 4, T = BN_SHIFT_SPREAD = 8, u = 2^-24. */
static double lane_mean(bn_dtype t) { return t == BN_FLOAT64 ? 0 : 3 * 4.01 * 0x1p-24; }
static double lane_var(bn_dtype t) { return t == BN_FLOAT64 ? 0 : (144 + 6 * 4.01 + 1) * 0x1p-24; }

static uint64_t rng = 88172645463325252ull;
static double uniform(void) /* in [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-52 - 1.0;
}

static int64_t at(bn_dims d, int64_t n, int64_t c, int64_t s)
{
    return d.channels_last ? (n * d.s + s) * d.c + c : (n * d.c + c) * d.s + s;
}

typedef struct {
    void *y, *dx, *dgamma, *dbeta;
    double *mean, *var, *invstd;
} results;

static results alloc_results(bn_dtype t, bn_dims d)
{
    size_t count = (size_t)(d.n * d.c * d.s);
    results r = {calloc(count, bn_dtype_size(t)), calloc(count, bn_dtype_size(t)),
                 calloc((size_t)d.c, bn_dtype_size(bn_param_dtype(t))), calloc((size_t)d.c, bn_dtype_size(bn_param_dtype(t))),
                 calloc((size_t)d.c, 8), calloc((size_t)d.c, 8), calloc((size_t)d.c, 8)};
    return r;
}

static void free_results(results *r)
{
    free(r->y), free(r->dx), free(r->dgamma), free(r->dbeta), free(r->mean), free(r->var), free(r->invstd);
}

static int same(const results *a, const results *b, bn_dtype t, bn_dims d)
{
    size_t count = (size_t)(d.n * d.c * d.s), pc = (size_t)d.c * bn_dtype_size(bn_param_dtype(t));
    return !memcmp(a->y, b->y, count * bn_dtype_size(t)) && !memcmp(a->dx, b->dx, count * bn_dtype_size(t)) &&
           !memcmp(a->dgamma, b->dgamma, pc) && !memcmp(a->dbeta, b->dbeta, pc) &&
           !memcmp(a->mean, b->mean, (size_t)d.c * 8) && !memcmp(a->var, b->var, (size_t)d.c * 8);
}

/* Training forward then backward with batch statistics, and an eval forward into dx
 * checked on its own before the backward overwrites it. */
static void run_kernels(bn_dtype t, bn_dims d, const void *x, const void *dy, const void *gamma, const void *beta,
                        int relu, results *r)
{
    CHECK(bn_forward_train(t, d, x, r->y, gamma, beta, 1e-5, relu, r->mean, r->var, r->invstd) == BN_OK, "train");
    CHECK(bn_forward_eval(t, d, x, r->dx, gamma, beta, r->mean, r->invstd, relu) == BN_OK, "eval");
    size_t count = (size_t)(d.n * d.c * d.s);
    CHECK(!memcmp(r->dx, r->y, count * bn_dtype_size(t)), "eval forward with the batch statistics != training forward");
    CHECK(bn_backward(t, d, x, dy, r->dx, gamma, beta, r->mean, r->invstd, 1, relu, r->dgamma, r->dbeta) == BN_OK,
          "backward");
}

/* The reference: every sum in long double over the stored (rounded) inputs. */
static void check_against_reference(bn_dtype t, bn_dims d, const void *x, const void *dy, const void *gamma,
                                    const void *beta, int relu, const results *r)
{
    const bn_dtype pt = bn_param_dtype(t);
    const double m = (double)(d.n * d.s), u = unit(t);
    /* Rounding errors of the kernels' blocked sums grow about as sqrt(m). */
    const double growth = 16 + sqrt(m);
    for (int64_t c = 0; c < d.c; c++) {
        long double sum = 0, sum2 = 0;
        double scale = 0;
        for (int64_t n = 0; n < d.n; n++)
            for (int64_t s = 0; s < d.s; s++)
                sum += bn_load(t, x, at(d, n, c, s));
        const double mean = (double)(sum / m);
        for (int64_t n = 0; n < d.n; n++)
            for (int64_t s = 0; s < d.s; s++) {
                const double v = bn_load(t, x, at(d, n, c, s));
                sum2 += (v - mean) * (v - mean);
                scale = fmax(scale, fabs(v));
            }
        const double var = (double)(sum2 / m), invstd = 1 / sqrt(var + 1e-5), g = bn_load(pt, gamma, c), b = bn_load(pt, beta, c);
        /* float16 data is computed in float lanes: float32 rounding of each term. */
        const double lane_u = t == BN_FLOAT64 ? u : 0x1p-24;
        CHECK(fabs(r->mean[c] - mean) <= growth * lane_u * scale, "%s mean[%lld] %.17g vs %.17g", bn_dtype_name(t),
              (long long)c, r->mean[c], mean);
        CHECK(fabs(r->var[c] - var) <= growth * lane_u * (var + scale * 1e-3), "%s var[%lld] %.17g vs %.17g",
              bn_dtype_name(t), (long long)c, r->var[c], var);
        double sdy = 0, sdyx = 0;
        for (int64_t n = 0; n < d.n; n++)
            for (int64_t s = 0; s < d.s; s++) {
                const int64_t i = at(d, n, c, s);
                const double xhat = (bn_load(t, x, i) - mean) * invstd, z = xhat * g + b;
                const double y = relu && z < 0 ? 0 : z;
                /* the mean's rounding, relative to scale, is amplified by invstd */
                CHECK(fabs(bn_load(t, r->y, i) - y) <= 8 * u * fmax(1, fabs(y)) + growth * lane_u * scale * invstd * fabs(g),
                      "%s y[%lld] %.17g vs %.17g", bn_dtype_name(t), (long long)i, bn_load(t, r->y, i), y);
                const double g_dy = relu && z <= 0 ? 0 : bn_load(t, dy, i);
                sdy += g_dy, sdyx += g_dy * xhat;
            }
        CHECK(fabs(bn_load(pt, r->dbeta, c) - sdy) <= 1e3 * lane_u * m, "dbeta[%lld]", (long long)c);
        CHECK(fabs(bn_load(pt, r->dgamma, c) - sdyx) <= 1e3 * lane_u * m, "dgamma[%lld]", (long long)c);
        for (int64_t n = 0; n < d.n; n++)
            for (int64_t s = 0; s < d.s; s++) {
                const int64_t i = at(d, n, c, s);
                const double xhat = (bn_load(t, x, i) - mean) * invstd, z = xhat * g + b;
                const double g_dy = relu && z <= 0 ? 0 : bn_load(t, dy, i);
                const double dx = g * invstd * (g_dy - sdy / m - xhat * sdyx / m);
                /* near a ReLU kink the rounded z may fall on the other side */
                if (relu && fabs(z) < 1e-2)
                    continue;
                CHECK(fabs(bn_load(t, r->dx, i) - dx) <= 16 * u * fmax(1, fabs(dx)) + 1e3 * lane_u * fabs(g * invstd) * (1 + scale * invstd),
                      "%s dx[%lld] %.9g vs %.9g", bn_dtype_name(t), (long long)i, bn_load(t, r->dx, i), dx);
            }
    }
}

/* ---- split phases ---- */

/* The results of the phases on a batch split along N into parts of rows[k] samples. */
static void run_phases(bn_dtype t, bn_dims d, const void *x, const void *dy, const void *gamma, const void *beta,
                       int relu, int parts, const int64_t *rows, results *r)
{
    const int64_t C = d.c, esize = (int64_t)bn_dtype_size(t);
    double *moments = calloc((size_t)(parts * 3 * C), 8), *count = calloc((size_t)C, 8);
    double *sums = calloc((size_t)(parts * 2 * C), 8), *total = calloc((size_t)(2 * C), 8);
    int64_t n0 = 0;
    for (int k = 0; k < parts; n0 += rows[k++]) {
        const bn_dims dk = {rows[k], C, d.s, d.channels_last};
        CHECK(bn_local_moments(t, dk, (const char *)x + n0 * C * d.s * esize, moments + k * 3 * C) == BN_OK, "moments");
    }
    bn_merge_moments(parts, C, moments, 1e-5, count, r->mean, r->var, r->invstd);
    for (int64_t c = 0; c < C; c++)
        CHECK(count[c] == (double)(d.n * d.s), "merged count %g", count[c]);
    n0 = 0;
    for (int k = 0; k < parts; n0 += rows[k++]) {
        const bn_dims dk = {rows[k], C, d.s, d.channels_last};
        const int64_t off = n0 * C * d.s * esize;
        CHECK(bn_forward_eval(t, dk, (const char *)x + off, (char *)r->y + off, gamma, beta, r->mean, r->invstd,
                              relu) == BN_OK, "elemt");
        CHECK(bn_grad_sums(t, dk, (const char *)x + off, (const char *)dy + off, gamma, beta, r->mean, r->invstd, relu,
                           sums + k * 2 * C, sums + k * 2 * C + C) == BN_OK, "grad sums");
    }
    for (int k = 0; k < parts; k++) /* in part order, as every process adds them */
        for (int64_t i = 0; i < 2 * C; i++)
            total[i] += sums[k * 2 * C + i];
    n0 = 0;
    for (int k = 0; k < parts; n0 += rows[k++]) {
        const bn_dims dk = {rows[k], C, d.s, d.channels_last};
        const int64_t off = n0 * C * d.s * esize;
        CHECK(bn_backward_from_sums(t, dk, (const char *)x + off, (const char *)dy + off, (char *)r->dx + off, gamma,
                                    beta, r->mean, r->invstd, total, total + C, d.n * d.s, relu) == BN_OK, "dx");
    }
    for (int64_t c = 0; c < C; c++) { /* the parameter gradients as the fused kernel rounds them */
        bn_store(bn_param_dtype(t), r->dbeta, c, total[c]);
        bn_store(bn_param_dtype(t), r->dgamma, c, total[C + c] * r->invstd[c]);
    }
    free(moments), free(count), free(sums), free(total);
}

/* The phases on one part give the fused kernels' bits; on parts (some empty) they
 * agree with the fused kernels to rounding, and give the same bits for every
 * thread count and SIMD level (`split_first` holds the first configuration's). */
static void check_phases(bn_dtype t, bn_dims d, const void *x, const void *dy, const void *gamma, const void *beta,
                         int relu, const results *fused, results *split_first, int have_first)
{
    const int64_t whole[1] = {d.n}, split[4] = {0, d.n / 3, 0, d.n - d.n / 3};
    results one = alloc_results(t, d), parts = alloc_results(t, d);
    run_phases(t, d, x, dy, gamma, beta, relu, 1, whole, &one);
    CHECK(same(&one, fused, t, d), "%s phases on one part differ from the fused kernels", bn_dtype_name(t));
    run_phases(t, d, x, dy, gamma, beta, relu, 4, split, &parts);
    if (have_first) {
        CHECK(same(&parts, split_first, t, d), "%s phases on parts differ between thread counts or SIMD levels",
              bn_dtype_name(t));
    } else {
        const int64_t count = d.n * d.c * d.s;
        const double u = unit(t);
        for (int64_t c = 0; c < d.c; c++) {
            /* the parts' blocks are not the whole batch's: each is within the bound of
             * the exact statistics */
            CHECK(fabs(parts.mean[c] - fused->mean[c]) <=
                      1e-12 * (1 + fabs(fused->mean[c])) + 2 * lane_mean(t) * sqrt(fused->var[c]),
                  "split mean[%lld]", (long long)c);
            CHECK(fabs(parts.var[c] - fused->var[c]) <= 1e-10 * (1 + fabs(fused->mean[c])) + 2 * lane_var(t) * fused->var[c],
                  "split var[%lld]", (long long)c);
        }
        for (int64_t i = 0; i < count; i++) {
            const double y = bn_load(t, fused->y, i), dx = bn_load(t, fused->dx, i);
            CHECK(fabs(bn_load(t, parts.y, i) - y) <= 8 * u * (1 + fabs(y)) + 1e-10, "%s split y[%lld] %.9g vs %.9g",
                  bn_dtype_name(t), (long long)i, bn_load(t, parts.y, i), y);
            if (relu && fabs(y) < 1e-2) /* near the kink the other statistics may fall on the other side */
                continue;
            CHECK(fabs(bn_load(t, parts.dx, i) - dx) <= 64 * u * (1 + fabs(dx)) + 1e-9, "%s split dx[%lld] %.9g vs %.9g",
                  bn_dtype_name(t), (long long)i, bn_load(t, parts.dx, i), dx);
        }
        *split_first = parts;
        free_results(&one);
        return;
    }
    free_results(&one);
    free_results(&parts);
}

static void test_case(bn_dtype t, bn_dims d, double offset, int relu)
{
    const size_t count = (size_t)(d.n * d.c * d.s);
    void *x = malloc(count * bn_dtype_size(t)), *dy = malloc(count * bn_dtype_size(t));
    void *gamma = malloc((size_t)d.c * bn_dtype_size(bn_param_dtype(t))), *beta = malloc((size_t)d.c * bn_dtype_size(bn_param_dtype(t)));
    for (size_t i = 0; i < count; i++) {
        bn_store(t, x, (int64_t)i, offset + 2 * uniform());
        bn_store(t, dy, (int64_t)i, uniform());
    }
    for (int64_t c = 0; c < d.c; c++) {
        bn_store(bn_param_dtype(t), gamma, c, 1 + 0.5 * uniform());
        bn_store(bn_param_dtype(t), beta, c, 0.5 * uniform());
    }
    const int thread_counts[] = {1, 2, 3, 8};
    results first = alloc_results(t, d), split_first = {0};
    int have_first = 0;
    for (int level = 0; level <= (int)bn_simd_best_supported(); level++)
        for (size_t k = 0; k < sizeof thread_counts / sizeof *thread_counts; k++) {
            bn_simd_select((bn_simd)level);
            CHECK(bn_pool_set_threads(thread_counts[k]) == 0, "set_threads(%d)", thread_counts[k]);
            results r = alloc_results(t, d);
            run_kernels(t, d, x, dy, gamma, beta, relu, &r);
            check_phases(t, d, x, dy, gamma, beta, relu, &r, &split_first, have_first);
            if (!have_first) {
                check_against_reference(t, d, x, dy, gamma, beta, relu, &r);
                free_results(&first);
                first = r;
                have_first = 1;
                continue;
            }
            CHECK(same(&first, &r, t, d),
                  "%s %s (%lld, %lld, %lld) relu=%d: %s with %d threads differs from baseline with 1 thread",
                  bn_dtype_name(t), d.channels_last ? "channels-last" : "NCHW", (long long)d.n, (long long)d.c,
                  (long long)d.s, relu, bn_simd_name((bn_simd)level), thread_counts[k]);
            free_results(&r);
        }
    free_results(&first);
    free_results(&split_first);
    free(x), free(dy), free(gamma), free(beta);
}

/* Channel c's coefficients k into cl_coefs through the kernels' vector form (means and
 * BN_COEFS-style vectors over all channels, of which only channel c is read). */
static void set_channel_coefs(const bn_block_ops *ops, const bn_coefs *k, int64_t c, int64_t channels,
                              void *cl_coefs)
{
    double *mean = calloc((size_t)channels, sizeof(double)), *coef = calloc((size_t)channels * 5, sizeof(double));
    CHECK(mean != NULL && coef != NULL, "out of memory");
    const double values[5] = {k->k_dy, k->k_xmu, k->k_const, k->relu_scale, k->relu_shift};
    mean[c] = k->mean;
    for (int i = 0; i < 5; i++)
        coef[i * channels + c] = values[i];
    ops->cl_set_coefs(mean, coef, c, c + 1, channels, cl_coefs);
    free(mean);
    free(coef);
}

/* An output loop given terms outside BN_FOR_EACH_TERMS (here with the forward's
 * ReLU clamp and dy both, which no kernel asks for) computes them, unspecialised,
 * instead of leaving the output unwritten: NCHW and channels-last, every level. */
static void test_unlisted_terms(void)
{
    enum { ROWS = 3, WIDTH = 37, COUNT = ROWS * WIDTH };
    const int terms = BN_USE_X | BN_USE_DY | BN_RELU_CLAMP;
    const bn_coefs k = {.mean = 0.5, .k_dy = 2, .k_xmu = 3, .k_const = -1, .relu_scale = 1, .relu_shift = 0};
    double x[COUNT], dy[COUNT], out[COUNT], cl_coefs[BN_CL_COEFS * WIDTH];
    for (int i = 0; i < COUNT; i++) {
        x[i] = (i % 7) * 0.25 - 0.5;
        dy[i] = (i % 5) * 0.5 - 1;
    }
    for (int level = 0; level <= (int)bn_simd_best_supported(); level++) {
        bn_simd_select((bn_simd)level);
        const bn_block_ops *ops = bn_block_ops_for(BN_FLOAT64);
        for (int layout = 0; layout < 2; layout++) {
            for (int i = 0; i < COUNT; i++)
                out[i] = NAN;
            if (layout == 0) {
                ops->output(x, dy, out, ROWS, WIDTH, WIDTH, &k, terms, 0);
            } else {
                for (int c = 0; c < WIDTH; c++)
                    set_channel_coefs(ops, &k, c, WIDTH, cl_coefs);
                ops->cl_output(x, dy, out, ROWS, WIDTH, cl_coefs, terms, 0);
            }
            for (int i = 0; i < COUNT; i++) {
                /* exact: every value is a small multiple of 1/4 */
                const double want = fmax(0.0, k.k_const + k.k_xmu * (x[i] - k.mean) + k.k_dy * dy[i]);
                CHECK(out[i] == want, "%s unlisted terms, %s, out[%d] = %g, want %g", bn_simd_name((bn_simd)level),
                      layout ? "channels-last" : "NCHW", i, out[i], want);
            }
        }
    }
    bn_simd_select(bn_simd_best_supported());
}

/* Channels-last channel counts below, at and above a SIMD chunk, not multiples of it. */
static const int64_t cl_channels[] = {1, 3, 17, 32, 100, 192};

static bn_coefs cl_test_coefs(int64_t c)
{
    return (bn_coefs){.mean = 0.125 * (double)c - 0.3, .k_dy = 1.5 - 0.01 * (double)c, .k_xmu = 0.75 + 0.02 * (double)c,
                      .k_const = 0.1 * (double)(c % 5) - 0.2, .relu_scale = 1.25, .relu_shift = 0.05 * (double)(c % 3)};
}

/* cl_output of every dtype and level, for channel counts whose rows end inside a
 * vector or share one: each element as the single-element NCHW loop computes it,
 * through the cache or streamed, out of place or in place, at several alignments;
 * and output_rows on the same elements as NCHW rows. */
static void test_cl_output_paths(void)
{
    static const int terms_list[] = {BN_USE_X, BN_USE_X | BN_RELU_CLAMP, BN_USE_X | BN_USE_DY | BN_RELU_MASK};
    static const int64_t rows_list[] = {1, 5, 40};
    for (int t = 0; t < BN_DTYPE_COUNT; t++) {
        if (!bn_dtype_supported((bn_dtype)t))
            continue;
        const size_t size = bn_dtype_size((bn_dtype)t);
        for (size_t ci = 0; ci < sizeof cl_channels / sizeof *cl_channels; ci++)
            for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++) {
                const int64_t channels = cl_channels[ci], rows = rows_list[ri], n = rows * channels;
                const size_t bytes = (size_t)n * size + 256;
                char *x = aligned_alloc(64, bytes), *dy = aligned_alloc(64, bytes), *want = aligned_alloc(64, bytes),
                     *out = aligned_alloc(64, bytes);
                double *cl_coefs = malloc((size_t)channels * BN_CL_COEFS * sizeof(double));
                for (int64_t i = 0; i < n + 256 / (int64_t)size; i++) {
                    bn_store((bn_dtype)t, x, i, 2 * uniform());
                    bn_store((bn_dtype)t, dy, i, uniform());
                }
                for (int level = 0; level <= (int)bn_simd_best_supported(); level++) {
                    bn_simd_select((bn_simd)level);
                    const bn_block_ops *ops = bn_block_ops_for((bn_dtype)t);
                    for (int64_t c = 0; c < channels; c++) {
                        const bn_coefs k = cl_test_coefs(c);
                        set_channel_coefs(ops, &k, c, channels, cl_coefs);
                    }
                    for (size_t ti = 0; ti < sizeof terms_list / sizeof *terms_list; ti++)
                        for (int64_t shift = 0; shift < 3; shift++) {
                            const int terms = terms_list[ti];
                            const char *xs = x + shift * (int64_t)size, *dys = dy + shift * (int64_t)size;
                            for (int64_t i = 0; i < n; i++) {
                                const bn_coefs k = cl_test_coefs(i % channels);
                                ops->output(xs + i * (int64_t)size, dys + i * (int64_t)size, want + i * (int64_t)size,
                                            1, 1, 1, &k, terms, 0);
                            }
                            for (int mode = 0; mode < 4; mode++) {
                                const int stream = mode & 1, in_place = mode >> 1;
                                char *o = out + shift * (int64_t)size;
                                memcpy(o, in_place ? xs : want, (size_t)n * size);
                                memset(o + n * (int64_t)size, 0x5a, size); /* past the block: not written */
                                ops->cl_output(in_place ? o : xs, dys, o, rows, channels, cl_coefs, terms, stream);
                                CHECK(memcmp(o, want, (size_t)n * size) == 0 && (unsigned char)o[n * (int64_t)size] == 0x5a,
                                      "%s %s cl_output C=%lld rows=%lld terms=%d offset=%lld stream=%d in_place=%d",
                                      bn_dtype_name((bn_dtype)t), bn_simd_name((bn_simd)level), (long long)channels,
                                      (long long)rows, terms, (long long)shift, stream, in_place);
                            }
                            /* the same elements as `channels` NCHW rows of `rows` values (N = 1)
                             * through output_rows, in two calls (the second from row
                             * channels / 2 on): row q of channel q */
                            const char *rows_dy = terms & BN_USE_DY ? dys : NULL;
                            for (int64_t i = 0; i < n; i++) {
                                const bn_coefs k = cl_test_coefs(i / rows);
                                ops->output(xs + i * (int64_t)size, rows_dy ? rows_dy + i * (int64_t)size : NULL,
                                            want + i * (int64_t)size, 1, 1, 1, &k, terms, 0);
                            }
                            for (int mode = 0; mode < 4; mode++) {
                                const int stream = mode & 1, in_place = mode >> 1;
                                const int64_t half = channels / 2;
                                char *o = out + shift * (int64_t)size;
                                memcpy(o, in_place ? xs : want, (size_t)n * size);
                                memset(o + n * (int64_t)size, 0x5a, size);
                                ops->output_rows(in_place ? o : xs, rows_dy, o, 0, half, rows, channels, cl_coefs, terms,
                                                 stream);
                                ops->output_rows(in_place ? o : xs, rows_dy, o, half, channels - half, rows, channels,
                                                 cl_coefs, terms, stream);
                                CHECK(memcmp(o, want, (size_t)n * size) == 0 && (unsigned char)o[n * (int64_t)size] == 0x5a,
                                      "%s %s output_rows C=%lld width=%lld terms=%d offset=%lld stream=%d in_place=%d",
                                      bn_dtype_name((bn_dtype)t), bn_simd_name((bn_simd)level), (long long)channels,
                                      (long long)rows, terms, (long long)shift, stream, in_place);
                            }
                        }
                }
                free(x), free(dy), free(want), free(out), free(cl_coefs);
            }
    }
    bn_simd_select(bn_simd_best_supported());
}

/* Channels-last float-lane sums: the same bits on every level, and within the float
 * lanes' rounding of the double loops (a loose bound: BN_STRETCH values per lane,
 * and the lanes' deviations rounded to float). */
static void test_cl_lane_sums(void)
{
    static const int64_t rows_list[] = {1, 7, 100, 333};
    for (int t = 0; t < BN_DTYPE_COUNT; t++) {
        if (!bn_dtype_supported((bn_dtype)t) || bn_block_ops_for((bn_dtype)t)->cl_lane_shifted_sums == NULL)
            continue;
        for (size_t ci = 0; ci < sizeof cl_channels / sizeof *cl_channels; ci++)
            for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++)
                for (int relu = 0; relu < 2; relu++) {
                    const int64_t channels = cl_channels[ci], rows = rows_list[ri], n = rows * channels;
                    const size_t size = bn_dtype_size((bn_dtype)t);
                    char *x = malloc((size_t)n * size), *dy = malloc((size_t)n * size);
                    double *shift = malloc((size_t)channels * sizeof(double)), *mean = malloc((size_t)channels * sizeof(double));
                    double *cl_coefs = malloc((size_t)channels * BN_CL_COEFS * sizeof(double));
                    double *sums = malloc((size_t)channels * 12 * sizeof(double));
                    double *first = sums, *lane = sums + 4 * channels, *exact = sums + 8 * channels;
                    for (int64_t i = 0; i < n; i++) {
                        bn_store((bn_dtype)t, x, i, 3 + uniform());
                        bn_store((bn_dtype)t, dy, i, uniform());
                    }
                    for (int64_t c = 0; c < channels; c++)
                        shift[c] = (double)(float)(3 + 0.5 * uniform());
                    for (int level = 0; level <= (int)bn_simd_best_supported(); level++) {
                        bn_simd_select((bn_simd)level);
                        const bn_block_ops *ops = bn_block_ops_for((bn_dtype)t);
                        for (int64_t c = 0; c < channels; c++) {
                            bn_coefs k = cl_test_coefs(c);
                            k.mean = mean[c] = shift[c] + 0.25;
                            set_channel_coefs(ops, &k, c, channels, cl_coefs);
                        }
                        double *into = level == 0 ? first : lane;
                        ops->cl_lane_shifted_sums(x, rows, channels, shift, into, into + channels);
                        ops->cl_lane_grad_sums(x, dy, rows, channels, mean, cl_coefs, relu, into + 2 * channels,
                                               into + 3 * channels);
                        if (level > 0)
                            CHECK(memcmp(first, lane, (size_t)channels * 4 * sizeof(double)) == 0,
                                  "%s %s cl lane sums C=%lld rows=%lld differ from level 0", bn_dtype_name((bn_dtype)t),
                                  bn_simd_name((bn_simd)level), (long long)channels, (long long)rows);
                        ops->cl_shifted_sums(x, rows, channels, shift, exact, exact + channels);
                        ops->cl_grad_sums(x, dy, rows, channels, mean, cl_coefs, relu, exact + 2 * channels,
                                          exact + 3 * channels);
                    }
                    for (int64_t c = 0; c < channels; c++) {
                        double abs_d = 0, abs_g = 0, abs_gx = 0;
                        for (int64_t r = 0; r < rows; r++) {
                            const double xv = bn_load((bn_dtype)t, x, r * channels + c), g = bn_load((bn_dtype)t, dy, r * channels + c);
                            abs_d += fabs(xv - shift[c]);
                            abs_g += fabs(g);
                            abs_gx += fabs(g * (xv - mean[c]));
                        }
                        const double u = 64 * 0x1p-24;
                        const double bound[4] = {u * abs_d, u * 4 * abs_d * abs_d, u * abs_g, u * 4 * (abs_gx + abs_g)};
                        for (int s = 0; s < 4; s++)
                            CHECK(fabs(first[s * channels + c] - exact[s * channels + c]) <= bound[s],
                                  "%s cl lane sum %d C=%lld rows=%lld relu=%d c=%lld: %.17g, double loops %.17g",
                                  bn_dtype_name((bn_dtype)t), s, (long long)channels, (long long)rows, relu,
                                  (long long)c, first[s * channels + c], exact[s * channels + c]);
                    }
                    free(x), free(dy), free(shift), free(mean), free(cl_coefs), free(sums);
                }
    }
    bn_simd_select(bn_simd_best_supported());
}

int main(void)
{
    /* (N, C, S): odd sizes, rows shorter and longer than a SIMD chunk, tails, one
     * channel, and enough elements that the pool goes parallel. */
    static const int64_t shapes[][3] = {
        {2, 1, 1}, {3, 5, 7}, {2, 3, 33}, {1, 7, 65}, {5, 2, 1000}, {4, 19, 49}, {2, 3, 20001}, {64, 33, 37},
    };
    const double offsets[] = {0, 1e3};
    int cases = 0;
    for (int t = 0; t < BN_DTYPE_COUNT; t++) {
        if (!bn_dtype_supported((bn_dtype)t))
            continue;
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            for (int layout = 0; layout < 2; layout++)
                for (int relu = 0; relu < 2; relu++) {
                    bn_dims d = {shapes[i][0], shapes[i][1], shapes[i][2], layout};
                    /* float16 cannot hold 1e3 + noise finely enough to be worth it */
                    const double offset = t == BN_FLOAT16 ? 0 : offsets[(i + relu) % 2];
                    test_case((bn_dtype)t, d, offset, relu);
                    cases++;
                }
    }
    test_unlisted_terms();
    test_cl_output_paths();
    test_cl_lane_sums();
    printf("test_kernels: %d cases, %ld checks passed (SIMD levels up to %s, float16 %s)\n", cases, checks,
           bn_simd_name(bn_simd_best_supported()), bn_dtype_supported(BN_FLOAT16) ? "yes" : "no");
    return 0;
}

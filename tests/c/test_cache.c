/*
 * The streaming threshold (cache.h): the last-level cache size the operating system
 * reports (argv[1], when given, is the size the caller read from sysfs itself), the
 * BNORM_STREAM_MIN_MIB override and the values it rejects; and outputs written with
 * streaming stores bit-identical to those written through the cache, for every
 * dtype, both layouts, rows that are and are not multiples of a cache line, and 1
 * and 2 threads. Exits 1 at the first failure.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnorm_kernels.h"
#include "cache.h"
#include "dispatch.h"
#include "pool.h"

#include "check.h"

static void check_threshold(const char *expected_llc)
{
    const int64_t llc = bn_cache_read_last_level_bytes();
    if (expected_llc != NULL)
        CHECK(llc == strtoll(expected_llc, NULL, 10), "last-level cache %lld, sysfs says %s", (long long)llc,
              expected_llc);
    const int64_t fallback = llc > 0 ? llc : BN_DEFAULT_CACHE_BYTES;
    unsetenv("BNORM_STREAM_MIN_MIB");
    CHECK(bn_cache_read_stream_min_bytes() == fallback, "no override");
    setenv("BNORM_STREAM_MIN_MIB", "3", 1);
    CHECK(bn_cache_read_stream_min_bytes() == (int64_t)3 << 20, "3 MiB");
    setenv("BNORM_STREAM_MIN_MIB", "0", 1);
    CHECK(bn_cache_read_stream_min_bytes() == 0, "0 MiB");
    const char *const rejected[] = {"", "-1", "1048577", "12x", "x", "1.5"};
    for (size_t i = 0; i < sizeof rejected / sizeof *rejected; i++) {
        setenv("BNORM_STREAM_MIN_MIB", rejected[i], 1);
        CHECK(bn_cache_read_stream_min_bytes() == fallback, "'%s' is not a size", rejected[i]);
    }
    unsetenv("BNORM_STREAM_MIN_MIB");
    printf("test_cache: last-level cache %lld bytes, streaming threshold %lld bytes\n", (long long)llc,
           (long long)bn_stream_min_bytes());
}

static uint64_t rng = 88172645463325252ull;
static double uniform(void) /* in [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-52 - 1.0;
}

/* The three outputs of one training step and an eval forward, one after the other. */
static char *outputs(bn_dtype t, bn_dims d, const char *x, const char *dy, const void *gamma, const void *beta,
                     int relu)
{
    const size_t bytes = (size_t)(d.n * d.c * d.s) * bn_dtype_size(t);
    const size_t params = (size_t)d.c * bn_dtype_size(bn_param_dtype(t));
    char *out = calloc(3 * bytes + 2 * params, 1);
    double *stats = calloc(3 * (size_t)d.c, sizeof(double));
    CHECK(out && stats, "out of memory");
    double *mean = stats, *var = stats + d.c, *invstd = stats + 2 * d.c;
    CHECK(bn_forward_train(t, d, x, out, gamma, beta, 1e-5, relu, mean, var, invstd) == BN_OK, "train");
    CHECK(bn_forward_eval(t, d, x, out + bytes, gamma, beta, mean, invstd, relu) == BN_OK, "eval");
    CHECK(bn_backward(t, d, x, dy, out + 2 * bytes, gamma, beta, mean, invstd, 1, relu, out + 3 * bytes,
                      out + 3 * bytes + params) == BN_OK,
          "backward");
    free(stats);
    return out;
}

static int check_streamed_outputs(void)
{
    /* rows of 601 values, not a multiple of a cache line; 1024 values, whole lines;
     * rows of 49 (7 x 7), short rows that are never streamed; (N, C) input; enough
     * elements to go parallel, with many channels (the by-channel schedule) and few
     * (block by block) */
    const bn_dims shapes[] = {{4, 3, 601, 0},   {8, 2, 1024, 0}, {6, 7, 601, 0},  {16, 300, 49, 0},
                              {300, 41, 1, 0}, {16, 300, 49, 1}, {3, 5, 601, 1}};
    const bn_dtype dtypes[] = {BN_FLOAT32, BN_FLOAT64, BN_FLOAT16};
    int cases = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (size_t j = 0; j < sizeof dtypes / sizeof *dtypes; j++) {
            const bn_dtype t = dtypes[j];
            if (!bn_dtype_supported(t))
                continue;
            const bn_dims d = shapes[i];
            const int64_t count = d.n * d.c * d.s;
            const bn_dtype p = bn_param_dtype(t);
            char *x = malloc((size_t)count * bn_dtype_size(t)), *dy = malloc((size_t)count * bn_dtype_size(t));
            char *gamma = malloc((size_t)d.c * bn_dtype_size(p)), *beta = malloc((size_t)d.c * bn_dtype_size(p));
            CHECK(x && dy && gamma && beta, "out of memory");
            for (int64_t e = 0; e < count; e++) {
                bn_store(t, x, e, 2.0 + uniform());
                bn_store(t, dy, e, uniform());
            }
            for (int64_t c = 0; c < d.c; c++) {
                bn_store(p, gamma, c, 1.0 + 0.5 * uniform());
                bn_store(p, beta, c, 0.5 * uniform());
            }
            const size_t bytes = 3 * (size_t)count * bn_dtype_size(t) + 2 * (size_t)d.c * bn_dtype_size(p);
            for (int relu = 0; relu < 2; relu++) {
                bn_pool_set_threads(1);
                bn_set_stream_min_bytes(INT64_MAX);
                char *cached = outputs(t, d, x, dy, gamma, beta, relu);
                for (int threads = 1; threads <= 2; threads++) {
                    bn_pool_set_threads(threads);
                    bn_set_stream_min_bytes(0);
                    char *streamed = outputs(t, d, x, dy, gamma, beta, relu);
                    CHECK(memcmp(cached, streamed, bytes) == 0, "%s (%lld, %lld, %lld)%s relu %d, %d threads: "
                          "streamed output differs", bn_dtype_name(t), (long long)d.n, (long long)d.c,
                          (long long)d.s, d.channels_last ? " channels-last" : "", relu, threads);
                    free(streamed);
                }
                free(cached);
            }
            free(x), free(dy), free(gamma), free(beta);
            cases++;
        }
    return cases;
}

int main(int argc, char **argv)
{
    bn_simd_select(bn_simd_best_supported());
    check_threshold(argc > 1 ? argv[1] : NULL);
    int cases = 0;
    for (int level = 0; level <= (int)bn_simd_best_supported(); level++) {
        bn_simd_select((bn_simd)level);
        cases += check_streamed_outputs();
    }
    printf("test_cache: %d cases, %ld checks passed (SIMD levels up to %s)\n", cases, checks,
           bn_simd_name(bn_simd_best_supported()));
    return 0;
}

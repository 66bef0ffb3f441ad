#include "dispatch.h"

#include <string.h>

static const char *const level_names[BN_SIMD_COUNT] = {"baseline", "avx2", "avx512"};

static bn_simd selected = BN_SIMD_BASELINE;

const char *bn_simd_name(bn_simd level) { return level_names[level]; }

int bn_simd_parse(const char *name)
{
    for (int i = 0; i < BN_SIMD_COUNT; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

bn_simd bn_simd_best_supported(void)
{
#if defined(BN_HAVE_X86_LEVELS)
    /* __builtin_cpu_supports consults CPUID and, for AVX and AVX-512, whether the
     * operating system saves the wider registers (XGETBV), so a CPU whose kernel
     * leaves AVX-512 disabled reports it unsupported. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return BN_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return BN_SIMD_AVX2;
#endif
    return BN_SIMD_BASELINE;
}

void bn_simd_select(bn_simd level) { selected = level; }

int bn_dtype_supported(bn_dtype dtype) { return bn_ops_baseline[dtype].sum != NULL; }

bn_simd bn_simd_selected(void) { return selected; }

const bn_block_ops *bn_block_ops_for(bn_dtype dtype)
{
#if defined(BN_HAVE_X86_LEVELS)
    if (selected == BN_SIMD_AVX512)
        return &bn_ops_avx512[dtype];
    if (selected == BN_SIMD_AVX2)
        return &bn_ops_avx2[dtype];
#endif
    return &bn_ops_baseline[dtype];
}

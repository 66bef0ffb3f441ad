/* Choice of the instruction-set level for the block loops, made once at import. */
#ifndef BN_DISPATCH_H
#define BN_DISPATCH_H

#include "block_ops.h"
#include "bnorm_kernels.h"

typedef enum { BN_SIMD_BASELINE = 0, BN_SIMD_AVX2 = 1, BN_SIMD_AVX512 = 2, BN_SIMD_COUNT } bn_simd;

/* Name of a level ("baseline", "avx2", "avx512"). */
const char *bn_simd_name(bn_simd level);

/* Parses a level name; returns -1 for an unknown name. */
int bn_simd_parse(const char *name);

/* The best level this CPU and operating system support. */
bn_simd bn_simd_best_supported(void);

/* Selects the level used from now on; the caller checks it is supported. */
void bn_simd_select(bn_simd level);

bn_simd bn_simd_selected(void);

/* The block loops of the selected level for one dtype. */
const bn_block_ops *bn_block_ops_for(bn_dtype dtype);

#endif

/*
 * The storage types of the kernels: one row each. Every per-dtype list of the kernel
 * layer and the binding follows from this table: the bn_dtype enumerators, element
 * sizes, parameter dtypes, names, the scalar conversions (bn_load, bn_store), the
 * per-level tables of block loops (block_isa.h), the NumPy type numbers, the dtype
 * names in error messages and Python's bnorm._core.DTYPES.
 *
 *   X(ID, NAME, SUFFIX, STORAGE, PARAM)
 *   ID       the bn_dtype enumerator
 *   NAME     NumPy's name of the dtype (the binding looks its type number up by it)
 *   SUFFIX   decorates what is built for the dtype: its block loops (sum_f32_avx2),
 *            their table entry (BN_OPS_f32) and its conversions (bn_f32_to_double)
 *   STORAGE  the C type of one element; its size is the element size
 *   PARAM    the bn_dtype of parameters, running statistics and parameter gradients
 *
 * A new storage type (bfloat16, say) is a row here, its two scalar conversions below,
 * and an instantiation of the block loops in block_isa.h that defines BN_OPS_<SUFFIX>
 * (leaving that out is a compile error, not a missing dtype).
 */
#ifndef BN_DTYPES_H
#define BN_DTYPES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* _Float16 exists on aarch64, with clang and with GCC >= 12 on x86-64. Without it the
 * float16 row has no block loops and bn_dtype_supported(BN_FLOAT16) is 0. */
#ifndef BN_HAVE_FLOAT16
#if defined(__FLT16_MAX__)
#define BN_HAVE_FLOAT16 1
#else
#define BN_HAVE_FLOAT16 0
#endif
#endif

#if BN_HAVE_FLOAT16
typedef _Float16 bn_float16;
#else
typedef uint16_t bn_float16; /* the bits only: nothing converts them (no float16 loops) */
#endif

/* float16 data has float32 parameters, PyTorch's mixed precision. */
#define BN_FOR_EACH_DTYPE(X)                                \
    X(BN_FLOAT32, "float32", f32, float, BN_FLOAT32)        \
    X(BN_FLOAT64, "float64", f64, double, BN_FLOAT64)       \
    X(BN_FLOAT16, "float16", f16, bn_float16, BN_FLOAT32)

#define BN_DTYPE_ENUMERATOR(ID, NAME, SUFFIX, STORAGE, PARAM) ID,
typedef enum { BN_FOR_EACH_DTYPE(BN_DTYPE_ENUMERATOR) BN_DTYPE_COUNT } bn_dtype;
#undef BN_DTYPE_ENUMERATOR

typedef struct {
    const char *name;
    size_t size;
    bn_dtype param;
} bn_dtype_info;

static inline const bn_dtype_info *bn_dtype_info_of(bn_dtype dtype)
{
#define BN_DTYPE_INFO(ID, NAME, SUFFIX, STORAGE, PARAM) [ID] = {NAME, sizeof(STORAGE), PARAM},
    static const bn_dtype_info infos[BN_DTYPE_COUNT] = {BN_FOR_EACH_DTYPE(BN_DTYPE_INFO)};
#undef BN_DTYPE_INFO
    return &infos[dtype];
}

static inline const char *bn_dtype_name(bn_dtype dtype) { return bn_dtype_info_of(dtype)->name; }
static inline size_t bn_dtype_size(bn_dtype dtype) { return bn_dtype_info_of(dtype)->size; }
static inline bn_dtype bn_param_dtype(bn_dtype dtype) { return bn_dtype_info_of(dtype)->param; }

/* ---- scalar conversions of each row, to double and back (rounding to nearest) ---- */

static inline double bn_f32_to_double(float v) { return (double)v; }
static inline float bn_f32_from_double(double v) { return (float)v; }
static inline double bn_f64_to_double(double v) { return v; }
static inline double bn_f64_from_double(double v) { return v; }
#if BN_HAVE_FLOAT16
static inline double bn_f16_to_double(bn_float16 v) { return (double)v; }
static inline bn_float16 bn_f16_from_double(double v) { return (bn_float16)v; }
#else
/* Never called: without block loops for float16 the binding refuses float16 input. */
static inline double bn_f16_to_double(bn_float16 v) { return (void)v, NAN; }
static inline bn_float16 bn_f16_from_double(double v) { return (void)v, (bn_float16)0; }
#endif

/* Element i of an array of `dtype`, as a double. */
static inline double bn_load(bn_dtype dtype, const void *p, int64_t i)
{
    switch (dtype) {
#define BN_LOAD_CASE(ID, NAME, SUFFIX, STORAGE, PARAM) \
    case ID:                                           \
        return bn_##SUFFIX##_to_double(((const STORAGE *)p)[i]);
        BN_FOR_EACH_DTYPE(BN_LOAD_CASE)
#undef BN_LOAD_CASE
    default:
        abort(); /* not a bn_dtype */
    }
}

/* Stores v, rounded to `dtype`, as element i. */
static inline void bn_store(bn_dtype dtype, void *p, int64_t i, double v)
{
    switch (dtype) {
#define BN_STORE_CASE(ID, NAME, SUFFIX, STORAGE, PARAM)   \
    case ID:                                              \
        ((STORAGE *)p)[i] = bn_##SUFFIX##_from_double(v); \
        return;
        BN_FOR_EACH_DTYPE(BN_STORE_CASE)
#undef BN_STORE_CASE
    default:
        abort(); /* not a bn_dtype */
    }
}

/* Whether this build has block loops for `dtype` (dispatch.c). */
int bn_dtype_supported(bn_dtype dtype);

#endif

/*
 * Memory of the arrays bnorm allocates for its outputs (y, dx, a layout copy of dy).
 *
 * A large output on a fresh allocation costs about a second write of its bytes: glibc
 * maps every block above its mmap threshold (at most 32 MiB) anew and unmaps it on
 * free, so each call faults in and the kernel zeroes every page. In a training loop the
 * output of the previous step is freed just before the next call asks for a block of
 * the same size, so bnorm keeps such blocks for reuse: outputs of at least
 * BN_OUTPUT_CACHE_MIN_BYTES get their memory from a NumPy memory handler
 * (PyDataMem_Handler, NumPy >= 1.22) installed only around bnorm's own allocation,
 * whose free() keeps the block and whose malloc() hands back a kept block of exactly
 * the requested size. Everything else goes to NumPy's default handler, which also
 * provides every fresh block, so its huge-page advice (madvise(MADV_HUGEPAGE) on
 * Linux for blocks >= 4 MiB) still applies and no platform-specific call is made here.
 *
 * Bounds (see alloc.c): at most BN_OUTPUT_CACHE_MAX_BLOCKS blocks, at most the limit
 * in bytes (512 MiB, or BNORM_OUTPUT_CACHE_MIB; 0 turns recycling off), the oldest
 * released first; a block not reused within BN_OUTPUT_CACHE_MAX_AGE of bnorm's large
 * allocations is released. The memory of kept blocks is freed memory NumPy no longer
 * counts (tracemalloc does not see it); _core._release_output_cache() frees it at
 * once. A user-installed NumPy handler is respected: bnorm then allocates through it.
 */
#ifndef BN_ALLOC_H
#define BN_ALLOC_H

#include "binding.h"

#define BN_OUTPUT_CACHE_MIN_BYTES ((size_t)4 << 20)
#define BN_OUTPUT_CACHE_MAX_BLOCKS 8
#define BN_OUTPUT_CACHE_MAX_AGE 32
#define BN_OUTPUT_CACHE_DEFAULT_MIB 512

/* An uninitialised C-ordered array, as PyArray_EMPTY(ndim, shape, typenum, 0), whose
 * memory comes from the recycling handler when it is large enough. */
PyArrayObject *bn_new_output(int ndim, const npy_intp *shape, int typenum);

/* Reads BNORM_OUTPUT_CACHE_MIB, creates the handler and adds the private functions
 * _output_cache_info, _release_output_cache and _set_output_cache_limit to `module`.
 * 0, or -1 with an exception. */
int bn_alloc_init(PyObject *module);

#endif

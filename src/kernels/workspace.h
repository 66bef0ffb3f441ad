/*
 * Scratch memory of one kernel call: the per-channel partial results and
 * coefficients of a job (fused.c), a few hundred bytes per channel.
 *
 * Allocated per call, these cost wide layers page faults on every call: glibc gives
 * freed memory above its trim threshold back to the system, so the next call faults
 * its pages in and the kernel zeroes them again (1 x 2048 float16 eval forward: 16
 * faults and about 70 us a call, against a few us of arithmetic). One block, the
 * one most recently given back if it is at most BN_WORKSPACE_KEEP_BYTES, is kept for
 * the next call; a call that finds none (another thread holds it) or one too small
 * allocates its own. Lock-free: any thread may take and give. After fork() the child
 * keeps the kept block, which is its own copy.
 */
#ifndef BN_WORKSPACE_H
#define BN_WORKSPACE_H

#include <stddef.h>

#define BN_WORKSPACE_KEEP_BYTES ((size_t)1 << 20)

/* At least `bytes` of memory aligned to 64 bytes, or NULL when out of memory. */
void *bn_workspace_take(size_t bytes);
/* Hands back what bn_workspace_take returned (NULL: nothing). */
void bn_workspace_give(void *memory);
/* Frees the kept block, if any. */
void bn_workspace_release(void);

#endif

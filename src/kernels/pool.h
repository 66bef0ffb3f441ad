/*
 * A small persistent pthread pool. One job runs at a time; a caller that finds the
 * pool busy (another Python thread is using it) runs its job on its own thread, so
 * calls on different modules never wait for each other. Workers start lazily and
 * are rebuilt after fork() in the child.
 */
#ifndef BN_POOL_H
#define BN_POOL_H

#include <stdint.h>

typedef void (*bn_task_fn)(void *ctx, int64_t task);

/* Runs fn(ctx, t) for t in [0, ntasks) and returns when all are done. `elements` is the
 * number of elements the job touches: small jobs run on the calling thread. */
void bn_pool_run(int64_t ntasks, bn_task_fn fn, void *ctx, int64_t elements);

/* Number of threads a job may use (the caller counts as one); n >= 1. Returns 0,
 * or -1 if worker threads could not be created (the pool then stays at 1 thread). */
int bn_pool_set_threads(int n);
int bn_pool_get_threads(void);

/* Default: BNORM_NUM_THREADS (parsed by the caller) or the CPUs this process may use. */
int bn_pool_available_cpus(void);

#endif

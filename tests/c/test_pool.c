/*
 * C test of the thread pool (src/kernels/pool.c), meant to run under
 * ThreadSanitizer: four callers submit jobs at once while a fifth changes the thread
 * count, as Python threads sharing bnorm do. Every task of every job must run
 * exactly once, whichever caller gets the pool and whichever runs inline.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "pool.h"

#define CALLERS 4
#define JOBS 300
#define TASKS 97

typedef struct {
    atomic_int runs[TASKS];
} job;

static void count_task(void *ctx, int64_t t) { atomic_fetch_add(&((job *)ctx)->runs[t], 1); }

static atomic_int failures;
static atomic_int callers_done;

static void *caller(void *arg)
{
    (void)arg;
    for (int j = 0; j < JOBS; j++) {
        job w;
        for (int t = 0; t < TASKS; t++)
            atomic_init(&w.runs[t], 0);
        bn_pool_run(TASKS, count_task, &w, 1 << 20);
        for (int t = 0; t < TASKS; t++)
            if (atomic_load(&w.runs[t]) != 1)
                atomic_fetch_add(&failures, 1);
    }
    atomic_fetch_add(&callers_done, 1);
    return NULL;
}

static void *resizer(void *arg)
{
    (void)arg;
    static const int counts[] = {1, 2, 3, 8};
    for (int i = 0; atomic_load(&callers_done) < CALLERS; i++)
        if (bn_pool_set_threads(counts[i % 4]) != 0)
            atomic_fetch_add(&failures, 1);
    return NULL;
}

int main(void)
{
    pthread_t callers[CALLERS], resize;
    bn_pool_set_threads(3);
    for (int i = 0; i < CALLERS; i++)
        pthread_create(&callers[i], NULL, caller, NULL);
    pthread_create(&resize, NULL, resizer, NULL);
    for (int i = 0; i < CALLERS; i++)
        pthread_join(callers[i], NULL);
    pthread_join(resize, NULL);
    const int bad = atomic_load(&failures);
    printf("test_pool: %d jobs of %d tasks by %d callers while resizing: %s\n", CALLERS * JOBS, TASKS, CALLERS,
           bad ? "FAILED" : "every task ran exactly once");
    return bad != 0;
}

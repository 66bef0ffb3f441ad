#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(_WIN32)
#include <windows.h>
#else
#include <sched.h>
#include <unistd.h>
#endif

/* Below this many elements a job runs on the calling thread: waking workers costs
 * a few microseconds, as much as normalising this many elements. */
#define BN_POOL_MIN_PARALLEL_ELEMENTS (1 << 16)

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* workers wait here for a new generation */
    pthread_cond_t finished;  /* the caller waits here for running == 0 */
    pthread_mutex_t job_lock; /* held by the one caller whose job owns the pool */
    pthread_t *threads;
    /* Threads a job may use, caller included. Written under job_lock, read without
     * it by every call deciding whether to go parallel: atomic, so that read is
     * defined behaviour (and ThreadSanitizer-clean) rather than a data race. */
    atomic_int nthreads;
    int nworkers;        /* worker threads currently alive */
    int stopping;
    uint64_t generation; /* bumped for each job */
    uint64_t start_generation; /* the generation when the current workers started */
    int running;         /* workers still inside the current job */
    bn_task_fn fn;
    void *ctx;
    int64_t ntasks;
    atomic_int_fast64_t next_task;
} bn_pool;

static bn_pool pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .finished = PTHREAD_COND_INITIALIZER,
    .job_lock = PTHREAD_MUTEX_INITIALIZER,
    .nthreads = 1,
};

static void drain_tasks(void)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&pool.next_task, 1);
        if (t >= pool.ntasks)
            return;
        pool.fn(pool.ctx, t);
    }
}

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pool.lock);
    /* Not pool.generation: a job posted before this thread first ran must not be
     * mistaken for one already seen. */
    uint64_t seen = pool.start_generation;
    for (;;) {
        while (pool.generation == seen && !pool.stopping)
            pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.stopping)
            break;
        seen = pool.generation;
        pthread_mutex_unlock(&pool.lock);
        drain_tasks();
        pthread_mutex_lock(&pool.lock);
        if (--pool.running == 0)
            pthread_cond_signal(&pool.finished);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Called with job_lock held. */
static void stop_workers(void)
{
    pthread_mutex_lock(&pool.lock);
    pool.stopping = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.nworkers; i++)
        pthread_join(pool.threads[i], NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.nworkers = 0;
    pool.stopping = 0;
}

/* Called with job_lock held. Returns 0 when nthreads - 1 workers are alive. */
static int start_workers(void)
{
    int want = atomic_load(&pool.nthreads) - 1;
    if (pool.nworkers == want)
        return 0;
    stop_workers();
    pool.threads = calloc((size_t)want + 1, sizeof(pthread_t));
    if (pool.threads == NULL)
        return -1;
    pool.start_generation = pool.generation;
    for (int i = 0; i < want; i++) {
        if (pthread_create(&pool.threads[i], NULL, worker_main, NULL) != 0)
            return -1;
        pool.nworkers++;
    }
    return 0;
}

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;
static void install_fork_handlers(void);

static void run_inline(int64_t ntasks, bn_task_fn fn, void *ctx)
{
    for (int64_t t = 0; t < ntasks; t++)
        fn(ctx, t);
}

void bn_pool_run(int64_t ntasks, bn_task_fn fn, void *ctx, int64_t elements)
{
    if (ntasks <= 1 || elements < BN_POOL_MIN_PARALLEL_ELEMENTS || atomic_load_explicit(&pool.nthreads, memory_order_relaxed) <= 1 ||
        pthread_mutex_trylock(&pool.job_lock) != 0) {
        run_inline(ntasks, fn, ctx);
        return;
    }
    if (start_workers() != 0) {
        pthread_mutex_unlock(&pool.job_lock);
        run_inline(ntasks, fn, ctx);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.ntasks = ntasks;
    atomic_store(&pool.next_task, 0);
    pool.running = pool.nworkers;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);

    drain_tasks();

    pthread_mutex_lock(&pool.lock);
    while (pool.running > 0)
        pthread_cond_wait(&pool.finished, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.job_lock);
}

int bn_pool_set_threads(int n)
{
    pthread_once(&fork_handlers_once, install_fork_handlers);
    pthread_mutex_lock(&pool.job_lock);
    atomic_store(&pool.nthreads, n < 1 ? 1 : n);
    int status = start_workers();
    if (status != 0) {
        stop_workers();
        atomic_store(&pool.nthreads, 1);
    }
    pthread_mutex_unlock(&pool.job_lock);
    return status;
}

int bn_pool_get_threads(void) { return atomic_load_explicit(&pool.nthreads, memory_order_relaxed); }

int bn_pool_available_cpus(void)
{
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
#if defined(_WIN32)
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    return info.dwNumberOfProcessors > 0 ? (int)info.dwNumberOfProcessors : 1;
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
#endif
}

#if !defined(_WIN32) /* no fork() there */
/* fork(): the prepare handler takes job_lock so no job is half-way through when the
 * process is copied; the child has none of the workers, so it forgets them and
 * starts new ones on its next parallel job. */
static void before_fork(void) { pthread_mutex_lock(&pool.job_lock); }

static void after_fork_parent(void) { pthread_mutex_unlock(&pool.job_lock); }

static void after_fork_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.finished, NULL);
    pthread_mutex_init(&pool.job_lock, NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.nworkers = 0;
    pool.stopping = 0;
    pool.running = 0;
}

static void install_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
#else
static void install_fork_handlers(void) {}
#endif

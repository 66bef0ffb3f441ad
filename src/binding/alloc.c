/* Recycling of bnorm's large output blocks through a NumPy memory handler (see alloc.h). */
#include "alloc.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *ptr;
    size_t size;
    uint64_t freed_at; /* value of cache.clock when the block was kept */
} kept_block;

/* Every field is guarded by `lock`. The handler's functions may run on any thread
 * (NumPy frees an array wherever its last reference goes), so nothing relies on the GIL. */
static struct {
    pthread_mutex_t lock;
    kept_block blocks[BN_OUTPUT_CACHE_MAX_BLOCKS]; /* oldest first */
    int count;
    size_t bytes; /* total size of the kept blocks */
    size_t limit; /* most bytes kept; 0: nothing is kept */
    uint64_t clock; /* large allocations so far: the age of a kept block is counted in these */
    uint64_t hits, misses;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER, .limit = (size_t)BN_OUTPUT_CACHE_DEFAULT_MIB << 20};

/* NumPy's default allocator: it makes every fresh block and frees every released one. */
static PyDataMemAllocator fallback;
/* The capsule NumPy stores in each array allocated through the handler. */
static PyObject *handler_capsule;

static void release_blocks(const kept_block *blocks, int n)
{
    for (int i = 0; i < n; i++)
        fallback.free(fallback.ctx, blocks[i].ptr, blocks[i].size);
}

static void remove_block_locked(int i)
{
    cache.bytes -= cache.blocks[i].size;
    memmove(&cache.blocks[i], &cache.blocks[i + 1], (size_t)(cache.count - i - 1) * sizeof(kept_block));
    cache.count--;
}

/* Takes out of the cache, into `out`, the blocks that are too old, then the oldest until
 * `incoming` more bytes in one more block (none when incoming is 0) fit the bounds.
 * Returns how many; the caller frees them once it has dropped the lock. */
static int evict_locked(size_t incoming, kept_block *out)
{
    int n = 0;
    for (int i = 0; i < cache.count;) {
        if (cache.clock - cache.blocks[i].freed_at > BN_OUTPUT_CACHE_MAX_AGE) {
            out[n++] = cache.blocks[i];
            remove_block_locked(i);
        } else {
            i++;
        }
    }
    const int extra = incoming > 0;
    while (cache.count > 0 &&
           (cache.count + extra > BN_OUTPUT_CACHE_MAX_BLOCKS || cache.bytes + incoming > cache.limit)) {
        out[n++] = cache.blocks[0];
        remove_block_locked(0);
    }
    return n;
}

static void *cache_malloc(void *Py_UNUSED(ctx), size_t size)
{
    if (size < BN_OUTPUT_CACHE_MIN_BYTES)
        return fallback.malloc(fallback.ctx, size);
    kept_block evicted[BN_OUTPUT_CACHE_MAX_BLOCKS];
    void *ptr = NULL;
    pthread_mutex_lock(&cache.lock);
    cache.clock++;
    /* the most recently freed block of this size: the likeliest to be in cache still */
    for (int i = cache.count - 1; i >= 0; i--) {
        if (cache.blocks[i].size == size) {
            ptr = cache.blocks[i].ptr;
            remove_block_locked(i);
            break;
        }
    }
    if (ptr != NULL)
        cache.hits++;
    else
        cache.misses++;
    const int n = evict_locked(0, evicted);
    pthread_mutex_unlock(&cache.lock);
    release_blocks(evicted, n);
    return ptr != NULL ? ptr : fallback.malloc(fallback.ctx, size);
}

/* np.zeros and the like never run under this handler; a fresh zeroed block if one asks. */
static void *cache_calloc(void *Py_UNUSED(ctx), size_t nelem, size_t elsize)
{
    return fallback.calloc(fallback.ctx, nelem, elsize);
}

/* ndarray.resize of an output: every block is the fallback's, so it can resize it. */
static void *cache_realloc(void *Py_UNUSED(ctx), void *ptr, size_t new_size)
{
    return fallback.realloc(fallback.ctx, ptr, new_size);
}

static void cache_free(void *Py_UNUSED(ctx), void *ptr, size_t size)
{
    if (ptr == NULL || size < BN_OUTPUT_CACHE_MIN_BYTES) {
        fallback.free(fallback.ctx, ptr, size);
        return;
    }
    kept_block evicted[BN_OUTPUT_CACHE_MAX_BLOCKS];
    int n = 0, kept = 0;
    pthread_mutex_lock(&cache.lock);
    if (size <= cache.limit) {
        n = evict_locked(size, evicted);
        cache.blocks[cache.count++] = (kept_block){ptr, size, cache.clock};
        cache.bytes += size;
        kept = 1;
    }
    pthread_mutex_unlock(&cache.lock);
    release_blocks(evicted, n);
    if (!kept)
        fallback.free(fallback.ctx, ptr, size);
}

static PyDataMem_Handler handler = {
    "bnorm_output_cache", 1, {NULL, cache_malloc, cache_calloc, cache_realloc, cache_free},
};

static size_t cache_limit(void)
{
    pthread_mutex_lock(&cache.lock);
    const size_t limit = cache.limit;
    pthread_mutex_unlock(&cache.lock);
    return limit;
}

PyArrayObject *bn_new_output(int ndim, const npy_intp *shape, int typenum)
{
    /* shape is that of an existing array of this type, so its size does not overflow */
    PyArray_Descr *descr = PyArray_DescrFromType(typenum);
    if (descr == NULL)
        return NULL;
    const size_t nbytes = (size_t)PyArray_MultiplyList((npy_intp *)shape, ndim) * (size_t)PyDataType_ELSIZE(descr);
    Py_DECREF(descr);
    if (nbytes < BN_OUTPUT_CACHE_MIN_BYTES || cache_limit() == 0)
        return (PyArrayObject *)PyArray_EMPTY(ndim, shape, typenum, 0);
    PyObject *current = PyDataMem_GetHandler();
    if (current == NULL)
        return NULL;
    const int numpy_default = current == PyDataMem_DefaultHandler;
    Py_DECREF(current);
    if (!numpy_default) /* the user chose a handler for this context: use it */
        return (PyArrayObject *)PyArray_EMPTY(ndim, shape, typenum, 0);
    /* The handler is a context variable: set for this one allocation, then restored,
     * so no other array of the user's gets bnorm's handler. */
    PyObject *previous = PyDataMem_SetHandler(handler_capsule);
    if (previous == NULL)
        return NULL;
    PyArrayObject *arr = (PyArrayObject *)PyArray_EMPTY(ndim, shape, typenum, 0);
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback); /* restoring must not run with an exception set */
    PyObject *ours = PyDataMem_SetHandler(previous);
    Py_DECREF(previous);
    if (ours == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        Py_XDECREF(arr);
        return NULL;
    }
    Py_DECREF(ours);
    PyErr_Restore(type, value, traceback);
    return arr;
}

/* ---- private Python functions, for tests and A/B measurements ---- */

static PyObject *output_cache_info(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&cache.lock);
    const unsigned long long blocks = (unsigned long long)cache.count, bytes = cache.bytes, limit = cache.limit,
                             hits = cache.hits, misses = cache.misses;
    pthread_mutex_unlock(&cache.lock);
    return Py_BuildValue("{sKsKsKsKsKsKsKsK}", "blocks", blocks, "bytes", bytes, "limit_bytes", limit, "hits", hits,
                         "misses", misses, "min_bytes", (unsigned long long)BN_OUTPUT_CACHE_MIN_BYTES,
                         "max_blocks", (unsigned long long)BN_OUTPUT_CACHE_MAX_BLOCKS, "max_age",
                         (unsigned long long)BN_OUTPUT_CACHE_MAX_AGE);
}

/* Sets the limit (0 keeps nothing) and releases what no longer fits; returns the old one. */
static size_t set_limit(size_t limit)
{
    kept_block evicted[BN_OUTPUT_CACHE_MAX_BLOCKS];
    pthread_mutex_lock(&cache.lock);
    const size_t old = cache.limit;
    cache.limit = limit;
    const int n = evict_locked(0, evicted);
    pthread_mutex_unlock(&cache.lock);
    release_blocks(evicted, n);
    return old;
}

static PyObject *release_output_cache(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    kept_block evicted[BN_OUTPUT_CACHE_MAX_BLOCKS];
    size_t released = 0;
    pthread_mutex_lock(&cache.lock);
    const int n = cache.count;
    memcpy(evicted, cache.blocks, (size_t)n * sizeof(kept_block));
    released = cache.bytes;
    cache.count = 0;
    cache.bytes = 0;
    pthread_mutex_unlock(&cache.lock);
    release_blocks(evicted, n);
    return PyLong_FromSize_t(released);
}

static PyObject *set_output_cache_limit(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const size_t limit = PyLong_AsSize_t(arg);
    if (limit == (size_t)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(set_limit(limit));
}

static PyMethodDef alloc_methods[] = {
    {"_output_cache_info", output_cache_info, METH_NOARGS,
     "_output_cache_info()\n--\n\nState and bounds of the recycled output blocks (kept blocks and bytes, hits, "
     "misses)."},
    {"_release_output_cache", release_output_cache, METH_NOARGS,
     "_release_output_cache()\n--\n\nFree every kept output block now; returns the bytes released."},
    {"_set_output_cache_limit", set_output_cache_limit, METH_O,
     "_set_output_cache_limit(nbytes, /)\n--\n\nKeep at most nbytes of freed output blocks (0: none); returns the "
     "previous limit."},
    {NULL},
};

/* ---- initialisation ---- */

#if !defined(_WIN32) /* no fork() there */
/* fork(): the prepare handler takes the lock so that the child gets a consistent list;
 * its kept blocks are its own (copy-on-write) memory, so it keeps using them. */
static void before_fork(void) { pthread_mutex_lock(&cache.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&cache.lock); }
static void after_fork_child(void) { pthread_mutex_init(&cache.lock, NULL); }
#endif

/* BNORM_OUTPUT_CACHE_MIB, else the default; an unusable value warns and keeps the default. */
static int init_limit(void)
{
    const char *env = getenv("BNORM_OUTPUT_CACHE_MIB");
    if (env == NULL || env[0] == '\0')
        return 0;
    char *end;
    const long long mib = strtoll(env, &end, 10);
    if (*end == '\0' && mib >= 0 && mib <= (1LL << 20)) {
        set_limit((size_t)mib << 20);
        return 0;
    }
    return PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                            "BNORM_OUTPUT_CACHE_MIB=%s is not an integer in [0, 1048576]; keeping at most %d MiB",
                            env, BN_OUTPUT_CACHE_DEFAULT_MIB);
}

int bn_alloc_init(PyObject *module)
{
    /* once per process: the handler and its capsule outlive any one module object,
     * since arrays allocated through it keep a reference to the capsule */
    if (handler_capsule == NULL) {
        PyDataMem_Handler *numpy_default = PyCapsule_GetPointer(PyDataMem_DefaultHandler, "mem_handler");
        if (numpy_default == NULL)
            return -1;
        fallback = numpy_default->allocator;
        handler_capsule = PyCapsule_New(&handler, "mem_handler", NULL);
        if (handler_capsule == NULL)
            return -1;
#if !defined(_WIN32)
        pthread_atfork(before_fork, after_fork_parent, after_fork_child);
#endif
        if (init_limit() < 0)
            return -1;
    }
    return PyModule_AddFunctions(module, alloc_methods);
}

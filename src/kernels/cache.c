#define _GNU_SOURCE
#include "cache.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(_WIN32)
#include <windows.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#else
#include <unistd.h>
#endif

#define BN_STREAM_MIN_MIB_MAX 1048576L

#if defined(__linux__)
/* The largest level's largest size among /sys/devices/system/cpu/cpu0/cache/indexN
 * (files level and size). sysfs gives sizes as "32768K"; M and G are accepted too. */
static int64_t read_sysfs(void)
{
    int64_t best = 0;
    long best_level = 0;
    for (int index = 0; index < 16; index++) {
        char path[80];
        long level = 0, size = 0;
        char unit = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", index);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        const int got_level = fscanf(f, "%ld", &level);
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        const int got_size = fscanf(f, "%ld%c", &size, &unit);
        fclose(f);
        if (got_level != 1 || got_size < 1 || size <= 0)
            continue;
        const int64_t bytes = (int64_t)size << (unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0);
        if (level > best_level || (level == best_level && bytes > best)) {
            best_level = level;
            best = bytes;
        }
    }
    return best;
}
#endif

int64_t bn_cache_read_last_level_bytes(void)
{
#if defined(_WIN32)
    DWORD length = 0;
    GetLogicalProcessorInformation(NULL, &length);
    SYSTEM_LOGICAL_PROCESSOR_INFORMATION *info = length > 0 ? malloc(length) : NULL;
    int64_t best = 0;
    BYTE best_level = 0;
    if (info != NULL && GetLogicalProcessorInformation(info, &length)) {
        for (DWORD i = 0; i < length / sizeof *info; i++) {
            if (info[i].Relationship != RelationCache || info[i].Cache.Type == CacheInstruction)
                continue;
            const BYTE level = info[i].Cache.Level;
            const int64_t bytes = (int64_t)info[i].Cache.Size;
            if (level > best_level || (level == best_level && bytes > best)) {
                best_level = level;
                best = bytes;
            }
        }
    }
    free(info);
    return best;
#elif defined(__APPLE__)
    /* Apple silicon reports no L3 (its system cache is not the CPU's): the L2 then */
    const char *const names[] = {"hw.l3cachesize", "hw.l2cachesize"};
    for (int i = 0; i < 2; i++) {
        int64_t bytes = 0;
        size_t length = sizeof bytes;
        if (sysctlbyname(names[i], &bytes, &length, NULL, 0) == 0 && length == sizeof bytes && bytes > 0)
            return bytes;
    }
    return 0;
#else
    int64_t bytes = 0;
#if defined(__linux__)
    /* sysfs first: glibc's sysconf answers from CPUID, which on AMD EPYC gives the
     * L3 of the whole socket (256 MiB) rather than that of the core's complex
     * (32 MiB) that sysfs reports */
    bytes = read_sysfs();
#endif
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
    if (bytes <= 0) {
        const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
        bytes = l3 > 0 ? l3 : l2 > 0 ? l2 : 0;
    }
#endif
    return bytes;
#endif
}

int64_t bn_cache_read_stream_min_bytes(void)
{
    const char *env = getenv("BNORM_STREAM_MIN_MIB");
    if (env != NULL && *env != '\0') {
        char *end;
        const long mib = strtol(env, &end, 10);
        if (*end == '\0' && mib >= 0 && mib <= BN_STREAM_MIN_MIB_MAX)
            return (int64_t)mib << 20;
    }
    const int64_t bytes = bn_cache_read_last_level_bytes();
    return bytes > 0 ? bytes : BN_DEFAULT_CACHE_BYTES;
}

/* -1 until first read. Two threads reading it first both store the same value. */
static atomic_int_fast64_t stream_min_bytes = -1;

#if defined(__GNUC__)
/* Read when the library is loaded (at import), like the SIMD level and the thread
 * count, rather than in the first kernel call: the files take a few hundred
 * microseconds. Elsewhere the first call reads them. */
__attribute__((constructor)) static void read_at_load(void) { (void)bn_stream_min_bytes(); }
#endif

int64_t bn_stream_min_bytes(void)
{
    int64_t bytes = atomic_load_explicit(&stream_min_bytes, memory_order_relaxed);
    if (bytes < 0) {
        bytes = bn_cache_read_stream_min_bytes();
        atomic_store_explicit(&stream_min_bytes, bytes, memory_order_relaxed);
    }
    return bytes;
}

void bn_set_stream_min_bytes(int64_t bytes) { atomic_store_explicit(&stream_min_bytes, bytes, memory_order_relaxed); }

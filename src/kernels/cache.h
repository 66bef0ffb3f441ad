/*
 * The CPU's last-level cache size, and from it the traffic above which outputs are
 * written with non-temporal (streaming) stores.
 *
 * An output is streamed when its input and output together (every array the kernel
 * reads and writes) exceed the last-level cache. Then a later sequential read of the
 * output, the next layer's, finds none of it in cache: the lines it wants first were
 * evicted first, and with a least-recently-used policy each miss evicts the next
 * line it will want. Writing through the cache would only cost a read of every line
 * before it is written and evict the input still to be read. When input and output
 * fit together, the output stays in cache for the next layer, which a streamed
 * output would give up. (fused.c keeps some outputs in cache regardless: see
 * streams_output there.)
 */
#ifndef BN_CACHE_H
#define BN_CACHE_H

#include <stdint.h>

/* Used when the operating system says nothing about its caches. */
#define BN_DEFAULT_CACHE_BYTES ((int64_t)16 << 20)

/* The size of the largest cache level the operating system reports for the first CPU
 * (Linux sysfs, else sysconf; macOS sysctl; Windows GetLogicalProcessorInformation),
 * read now; 0 if it reports none. */
int64_t bn_cache_read_last_level_bytes(void);

/* The streaming threshold as read now: BNORM_STREAM_MIN_MIB (whole MiB, 0 to
 * 1048576) if set to such a value, else the last-level cache size, else
 * BN_DEFAULT_CACHE_BYTES. */
int64_t bn_cache_read_stream_min_bytes(void);

/* The threshold the kernels use: bn_cache_read_stream_min_bytes() when the library
 * is loaded (GCC and clang; else on the first call), the value of
 * bn_set_stream_min_bytes after one. Outputs are streamed when the bytes a kernel
 * reads and writes exceed it. */
int64_t bn_stream_min_bytes(void);
void bn_set_stream_min_bytes(int64_t bytes);

#endif

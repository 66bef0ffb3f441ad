/*
 * C test of the kernels' workspace (src/kernels/workspace.c): alignment, reuse of the
 * most recently given block, the size bound, and exclusive ownership under threads
 * (also run under ThreadSanitizer by .ci/c_tests).
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "workspace.h"

enum { THREADS = 4, ROUNDS = 20000 };

static void test_reuse(void)
{
    char *a = bn_workspace_take(100), *b = bn_workspace_take(100);
    CHECK(a != NULL && b != NULL && a != b, "two blocks held at once are distinct");
    CHECK((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0, "blocks are 64-byte aligned");
    memset(a, 1, 100);
    memset(b, 2, 100);
    bn_workspace_give(a);
    bn_workspace_give(b);
    CHECK(bn_workspace_take(60) == b, "the block given last is kept for a request it fits");
    char *c = bn_workspace_take(60);
    CHECK(c != b, "the kept block is handed out once");
    bn_workspace_give(c);
    bn_workspace_give(b);

    /* a block above the bound is freed, and leaves the kept one in place */
    char *big = bn_workspace_take(BN_WORKSPACE_KEEP_BYTES + 1);
    CHECK(big != NULL, "a large block");
    memset(big, 3, BN_WORKSPACE_KEEP_BYTES + 1);
    char *small = bn_workspace_take(64);
    bn_workspace_give(small);
    bn_workspace_give(big);
    CHECK(bn_workspace_take(64) == small, "giving back a block above the bound keeps the kept one");
    bn_workspace_give(small);

    /* a request the kept block is too small for gets a block of its size */
    char *larger = bn_workspace_take(100000);
    CHECK(larger != NULL && (uintptr_t)larger % 64 == 0, "a larger aligned block");
    memset(larger, 4, 100000);
    bn_workspace_give(larger);
    CHECK(bn_workspace_take(100000) == larger, "the larger block is kept");
    bn_workspace_give(larger);
    bn_workspace_release();
    CHECK(bn_workspace_take(SIZE_MAX) == NULL, "an impossible size gives NULL");
}

/* Each thread fills what it takes with its own byte and finds it intact before
 * giving it back: a block handed to two threads at once would show the other's.
 * Threads count their failures (CHECK's counter is not shared-safe). */
static void *hammer(void *arg)
{
    const unsigned char mine = (unsigned char)(uintptr_t)arg;
    uintptr_t failures = 0;
    for (int r = 0; r < ROUNDS; r++) {
        const size_t bytes = 64 + (size_t)(r * 37 % 5000);
        unsigned char *m = bn_workspace_take(bytes);
        if (m == NULL) {
            failures++;
            continue;
        }
        memset(m, mine, bytes);
        for (size_t i = 0; i < bytes; i += 61)
            failures += m[i] != mine;
        bn_workspace_give(m);
    }
    return (void *)failures;
}

static void test_threads(void)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, hammer, (void *)(uintptr_t)(i + 1)) == 0, "pthread_create");
    for (int i = 0; i < THREADS; i++) {
        void *failures;
        pthread_join(t[i], &failures);
        CHECK(failures == NULL, "thread %d: %lu blocks missing or shared with another thread", i,
              (unsigned long)(uintptr_t)failures);
    }
    bn_workspace_release();
}

int main(void)
{
    test_reuse();
    test_threads();
    printf("test_workspace: %ld checks passed\n", checks);
    return 0;
}

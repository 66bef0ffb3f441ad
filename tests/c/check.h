/*
 * The assertion of the kernel layer's C tests: counts every check, and at the first
 * failure prints where and why and exits 1. One test program per file includes it.
 */
#ifndef BN_TEST_CHECK_H
#define BN_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static long checks;

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        checks++;                                                                        \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);                       \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

#endif

#include "workspace.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* A block is malloc'ed memory: this header, then the caller's memory at the next
 * 64-byte boundary (`memory`; `start` is what malloc returned). */
typedef struct {
    void *start;
    size_t bytes; /* usable from `memory` on */
} block_header;

static _Atomic(block_header *) kept;

static block_header *header_of(void *memory) { return (block_header *)memory - 1; }

static void free_block(block_header *h)
{
    if (h != NULL)
        free(h->start);
}

void *bn_workspace_take(size_t bytes)
{
    block_header *h = atomic_exchange(&kept, NULL);
    if (h != NULL && h->bytes >= bytes)
        return h + 1;
    free_block(h);
    if (bytes > SIZE_MAX - sizeof(block_header) - 64)
        return NULL;
    char *start = malloc(sizeof(block_header) + 64 + bytes);
    if (start == NULL)
        return NULL;
    /* the first 64-byte boundary with room for the header before it */
    const uintptr_t at = ((uintptr_t)start + sizeof(block_header) + 63) & ~(uintptr_t)63;
    char *memory = start + (at - (uintptr_t)start);
    h = header_of(memory);
    h->start = start;
    h->bytes = bytes;
    return memory;
}

void bn_workspace_give(void *memory)
{
    if (memory == NULL)
        return;
    block_header *h = header_of(memory);
    if (h->bytes > BN_WORKSPACE_KEEP_BYTES) {
        free_block(h);
        return;
    }
    free_block(atomic_exchange(&kept, h));
}

void bn_workspace_release(void) { free_block(atomic_exchange(&kept, NULL)); }

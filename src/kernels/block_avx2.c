/* The block loops built for the avx2 x86-64 level (flags in setup.py). */
#define BN_LEVEL avx2
#include "block_isa.h"

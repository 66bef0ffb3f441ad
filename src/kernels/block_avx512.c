/* The block loops built for the avx512 x86-64 level (flags in setup.py). */
#define BN_LEVEL avx512
#include "block_isa.h"

/* The block loops built for the baseline x86-64 level (flags in setup.py). */
#define BN_LEVEL baseline
#include "block_isa.h"

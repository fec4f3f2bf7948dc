#include "common/orthonormalize.h"

// Implementation in progress.

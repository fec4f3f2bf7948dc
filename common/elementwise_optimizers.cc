#include "common/elementwise_optimizers.h"

// Implementation in progress.

#include "common/compressor.h"

// Implementation in progress.

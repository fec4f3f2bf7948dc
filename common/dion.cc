#include "common/dion.h"

// Implementation in progress.

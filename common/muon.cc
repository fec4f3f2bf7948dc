#include "common/muon.h"

// Implementation in progress.

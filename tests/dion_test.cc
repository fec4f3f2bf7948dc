#include <gtest/gtest.h>

// Tests in progress.

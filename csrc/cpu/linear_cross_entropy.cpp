// CPU registration of rarekit::linear_cross_entropy_forward (csrc/include/rarekit/linear_cross_entropy_op.h).
#include <torch/library.h>

#include "rarekit/linear_cross_entropy_op.h"

TORCH_LIBRARY_IMPL(rarekit, CPU, m) { m.impl("linear_cross_entropy_forward", &rarekit::linear_cross_entropy_forward); }

"""A backend module whose dependency is missing (like the GPU kernels without Triton); used by test_backend."""

import segquant_test_missing_dependency  # noqa: F401

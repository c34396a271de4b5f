"""Triton kernels and their launch-size helpers, nothing else. Imported only when a kernel runs."""

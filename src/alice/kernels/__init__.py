"""Fused kernels for the Alice update, built lazily from the formulas of ``alice._math``."""

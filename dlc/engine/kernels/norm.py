"""Placeholder until its kernels land."""

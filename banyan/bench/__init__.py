"""Benchmarks that span the stack: `make gpu-check` (gpu_check, gpu_parts, gpu_report)."""

"""spava_kernels: GPU kernels (Triton) with torch references; imported lazily by spava."""

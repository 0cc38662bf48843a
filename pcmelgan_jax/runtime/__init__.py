"""Where programs run: XLA compiler options, the host allocator, the device mesh, and the
device subsets of parallel jobs."""

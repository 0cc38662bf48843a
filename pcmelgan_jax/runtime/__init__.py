"""Where programs run: XLA compiler options, the host allocator, the device mesh."""

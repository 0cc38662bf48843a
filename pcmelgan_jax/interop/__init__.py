"""The original PyTorch code: weight import/export and the parity check."""

"""layers: Flax NNX sequence mixers, blocks and models built on ``ssm`` and ``scan_kernels``."""

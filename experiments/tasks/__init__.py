"""Long-range tasks: LRA generators and loaders, synthetic memory tasks."""

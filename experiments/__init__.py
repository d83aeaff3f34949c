"""experiments: long-range tasks, configs, training / evaluation CLIs, benchmarks and plots."""

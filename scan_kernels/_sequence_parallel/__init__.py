"""Sequence parallelism: ``op`` (``sequence_parallel(op, axis, mesh=None)``, the time axis of ``linear_scan``,
``linear_attention``, ``delta_rule`` or ``selective_scan`` sharded over a mesh axis, exact forward and gradients)."""

from algornn.scan_kernels._sequence_parallel.op import sequence_parallel as sequence_parallel

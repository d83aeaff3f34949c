"""Linear attention (decayed / gated): ``op`` (public op, chunked XLA form, ``custom_vjp``, dispatch),
``reference`` (token loop, step, quadratic form), ``pallas`` (Pallas kernels), ``chunk_states`` (the chunk-state
recurrence, on the public ``linear_scan``)."""

from algornn.scan_kernels._linear_attention.op import linear_attention as linear_attention
from algornn.scan_kernels._linear_attention.reference import linear_attention_quadratic as linear_attention_quadratic
from algornn.scan_kernels._linear_attention.reference import linear_attention_reference as linear_attention_reference
from algornn.scan_kernels._linear_attention.reference import linear_attention_step as linear_attention_step

"""Delta rule / gated DeltaNet: ``op`` (public op, chunked WY/UT XLA form, ``custom_vjp``, dispatch),
``reference`` (token loop and step), ``pallas`` (Pallas kernels), ``chunk_states`` (the chunk-state recurrence,
on the public ``dense_linear_scan``)."""

from algornn.scan_kernels._delta_rule.op import delta_rule as delta_rule
from algornn.scan_kernels._delta_rule.reference import delta_rule_reference as delta_rule_reference
from algornn.scan_kernels._delta_rule.reference import delta_rule_step as delta_rule_step

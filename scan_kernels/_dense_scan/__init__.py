"""Dense linear scan ``h_t = A_t h_{t-1} + b_t``: ``op`` (public op, ``custom_vjp``, dispatch, XLA forms,
reference), ``pallas`` (the Pallas kernel)."""

from algornn.scan_kernels._dense_scan.op import dense_linear_scan as dense_linear_scan
from algornn.scan_kernels._dense_scan.op import dense_linear_scan_reference as dense_linear_scan_reference

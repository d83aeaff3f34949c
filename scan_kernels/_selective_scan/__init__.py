"""Selective scan (Mamba's S6): ``op`` (public op, chunked XLA form, ``custom_vjp``, dispatch), ``reference``
(input checks, the decoding step, the materialised reference on ``linear_scan``), ``pallas`` (forward kernel)."""

from algornn.scan_kernels._selective_scan.op import selective_scan as selective_scan
from algornn.scan_kernels._selective_scan.reference import selective_scan_reference as selective_scan_reference
from algornn.scan_kernels._selective_scan.reference import selective_scan_step as selective_scan_step

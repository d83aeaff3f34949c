"""Diagonal linear scan ``h_t = a_t ⊙ h_{t-1} + b_t``: ``op`` (public op, ``custom_vjp``, dispatch, reference),
``xla`` (pure-XLA forms), ``pallas`` (the Pallas kernel)."""

from algornn.scan_kernels._linear_scan.op import linear_scan as linear_scan
from algornn.scan_kernels._linear_scan.op import linear_scan_reference as linear_scan_reference

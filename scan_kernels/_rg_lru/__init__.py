"""RG-LRU (Griffin/Hawk): ``op`` (the public op, on the public ``linear_scan``), ``reference`` (input checks,
gates, the token loop and the decoding step)."""

from algornn.scan_kernels._rg_lru.op import rg_lru as rg_lru
from algornn.scan_kernels._rg_lru.reference import rg_lru_reference as rg_lru_reference
from algornn.scan_kernels._rg_lru.reference import rg_lru_step as rg_lru_step

"""DeltaProduct (Siems et al. 2025): ``op`` (the public op, a composition on the public ``delta_rule``),
``reference`` (input checks, the token loop and the decoding step)."""

from algornn.scan_kernels._delta_product.op import delta_product as delta_product
from algornn.scan_kernels._delta_product.reference import delta_product_reference as delta_product_reference
from algornn.scan_kernels._delta_product.reference import delta_product_step as delta_product_step

"""scan_kernels: the recurrence core of AlgoRNN (pure functions of arrays).

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from scan_kernels._backend import BACKENDS as BACKENDS
from scan_kernels._backend import resolve_backend as resolve_backend
from scan_kernels._dense_scan import dense_linear_scan as dense_linear_scan
from scan_kernels._dense_scan import dense_linear_scan_reference as dense_linear_scan_reference
from scan_kernels._linear_scan import linear_scan as linear_scan
from scan_kernels._linear_scan import linear_scan_reference as linear_scan_reference

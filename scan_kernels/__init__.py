"""scan_kernels: the recurrence core of AlgoRNN (pure functions of arrays).

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from scan_kernels._backend import BACKENDS as BACKENDS
from scan_kernels._backend import resolve_backend as resolve_backend
from scan_kernels._dense_scan import dense_linear_scan as dense_linear_scan
from scan_kernels._dense_scan import dense_linear_scan_reference as dense_linear_scan_reference
from scan_kernels._linear_scan import linear_scan as linear_scan
from scan_kernels._linear_scan import linear_scan_reference as linear_scan_reference

# fast-weight recurrences
from scan_kernels._delta_rule import delta_rule as delta_rule
from scan_kernels._delta_rule_reference import delta_rule_reference as delta_rule_reference
from scan_kernels._delta_rule_reference import delta_rule_step as delta_rule_step
from scan_kernels._linear_attention import linear_attention as linear_attention
from scan_kernels._linear_attention_reference import linear_attention_quadratic as linear_attention_quadratic
from scan_kernels._linear_attention_reference import linear_attention_reference as linear_attention_reference
from scan_kernels._linear_attention_reference import linear_attention_step as linear_attention_step

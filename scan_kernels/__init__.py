"""scan_kernels: the recurrence core of AlgoRNN (pure functions of arrays).

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from scan_kernels._backend import BACKENDS as BACKENDS

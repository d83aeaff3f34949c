"""mLSTM (xLSTM): ``op`` (the public op, a composition on the public ``linear_attention``: max-plus stabiliser
scan, rescaled keys, normaliser), ``reference`` (input checks, the token loop and the decoding step)."""

from algornn.scan_kernels._mlstm.op import mlstm as mlstm
from algornn.scan_kernels._mlstm.reference import mlstm_reference as mlstm_reference
from algornn.scan_kernels._mlstm.reference import mlstm_step as mlstm_step

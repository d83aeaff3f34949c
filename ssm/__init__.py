"""ssm: state-space math (HiPPO operators, NPLR/DPLR forms, discretization, kernels, initializers).

Pure functions of arrays; no Flax, no parameters. Shape legend: B L D N H K V C (see docs/shapes.md).
Submodules: ``ssm.hippo`` (float64 numpy HiPPO matrices, NPLR/DPLR), ``ssm.discretize`` (ZOH,
bilinear, Euler; dense and diagonal), ``ssm.kernels`` (convolution kernels K (..., L) and FFT
convolutions), ``ssm.init`` (``(key, shape, ...)`` initializers). Conventions for layers are in the
``ssm.kernels`` module docstring.
"""

from algornn.ssm import discretize as discretize
from algornn.ssm import hippo as hippo
from algornn.ssm import init as init
from algornn.ssm import kernels as kernels
from algornn.ssm.discretize import bilinear as bilinear
from algornn.ssm.discretize import bilinear_diag as bilinear_diag
from algornn.ssm.discretize import euler as euler
from algornn.ssm.discretize import euler_diag as euler_diag
from algornn.ssm.discretize import zoh as zoh
from algornn.ssm.discretize import zoh_diag as zoh_diag
from algornn.ssm.hippo import dplr as dplr
from algornn.ssm.hippo import nplr as nplr
from algornn.ssm.hippo import rank_correction as rank_correction
from algornn.ssm.hippo import transition as transition
from algornn.ssm.kernels import bidirectional_conv as bidirectional_conv
from algornn.ssm.kernels import causal_conv as causal_conv
from algornn.ssm.kernels import causal_conv_reference as causal_conv_reference
from algornn.ssm.kernels import dense_kernel as dense_kernel
from algornn.ssm.kernels import diag_kernel as diag_kernel
from algornn.ssm.kernels import diag_kernel_reference as diag_kernel_reference
from algornn.ssm.kernels import dplr_kernel as dplr_kernel
from algornn.ssm.kernels import dplr_kernel_reference as dplr_kernel_reference
from algornn.ssm.kernels import dplr_real_form as dplr_real_form
from algornn.ssm.kernels import two_sided_kernel as two_sided_kernel

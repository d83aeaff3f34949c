"""ssm: state-space math (HiPPO operators, NPLR/DPLR forms, discretization, kernels, initializers).

Pure functions of arrays; no Flax, no parameters. Shape legend: B L D N H K V C (see DESIGN.md §2).
Submodules: ``ssm.hippo`` (float64 numpy HiPPO matrices, NPLR/DPLR), ``ssm.discretize`` (ZOH,
bilinear, Euler; dense and diagonal), ``ssm.kernels`` (convolution kernels K (..., L) and FFT
convolutions), ``ssm.init`` (``(key, shape, ...)`` initializers). Conventions for layers are in the
``ssm.kernels`` module docstring.
"""

from ssm import discretize as discretize
from ssm import hippo as hippo
from ssm import init as init
from ssm import kernels as kernels
from ssm.discretize import bilinear as bilinear
from ssm.discretize import bilinear_diag as bilinear_diag
from ssm.discretize import euler as euler
from ssm.discretize import euler_diag as euler_diag
from ssm.discretize import zoh as zoh
from ssm.discretize import zoh_diag as zoh_diag
from ssm.hippo import dplr as dplr
from ssm.hippo import nplr as nplr
from ssm.hippo import rank_correction as rank_correction
from ssm.hippo import transition as transition
from ssm.kernels import bidirectional_conv as bidirectional_conv
from ssm.kernels import causal_conv as causal_conv
from ssm.kernels import causal_conv_reference as causal_conv_reference
from ssm.kernels import dense_kernel as dense_kernel
from ssm.kernels import diag_kernel as diag_kernel
from ssm.kernels import diag_kernel_reference as diag_kernel_reference
from ssm.kernels import dplr_kernel as dplr_kernel
from ssm.kernels import dplr_kernel_reference as dplr_kernel_reference
from ssm.kernels import dplr_real_form as dplr_real_form
from ssm.kernels import two_sided_kernel as two_sided_kernel

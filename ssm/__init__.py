"""ssm: state-space math (HiPPO operators, NPLR/DPLR forms, discretization, kernels, initializers).

Pure functions of arrays; no Flax, no parameters. Shape legend: B L D N H K V C (see DESIGN.md §2).
"""

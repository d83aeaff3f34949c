"""Pieces shared by every op of ``scan_kernels``; imports no op folder (docs/architecture.md §scan_kernels layout).

* ``backend`` — the backend names and the one auto-backend rule (``resolve_backend``, compile probes).
* ``validate`` — generic argument checks (also used by ``ssm``, ``layers`` and ``experiments``).
* ``numerics`` — ``two_sum`` and ``cmul``, for the scans' XLA forms and Pallas kernels.
* ``utils`` — dtype promotion and batch sharding.
* ``pallas_config`` — how Pallas kernels lower on a GPU.
* ``chunk_utils``, ``fast_weight_checks``, ``fast_weight_pallas`` — chunking, input checks and Pallas layout
  helpers of the chunked fast-weight ops.
* ``segments`` — a recurrence over long sequences segment by segment, each segment's forward recomputed in the
  backward (``segmented``: scratch of one segment, for the ops that compose on another op).
* ``packing`` — packed sequences: ``segment_ids`` checks and the start / padding masks of the scans and
  fast-weight ops.
* ``key_decay`` — per-key decayed scores ``Σ_d x_rd k_id exp(γ_rd − γ_id)`` of a chunk by secondary chunking, and
  their cotangents (per-key gates without a ``(C, C, K)`` tensor).
"""

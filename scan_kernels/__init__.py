"""scan_kernels: the recurrence core of AlgoRNN (pure functions of arrays).

* ``linear_scan(a, b, h0=None, *, reverse=False, backend=None, vjp="custom")``:
  ``h_t = a_t ⊙ h_{t-1} + b_t`` over ``b (B, L, D)``, ``a`` broadcastable to ``b``, ``h0 (B, D)``.
* ``dense_linear_scan(A, b, h0=None, *, reverse=False, backend=None, vjp="custom")``:
  ``h_t = A_t h_{t-1} + b_t`` with ``A (N, N)`` or ``(B, L, N, N)``, ``b (B, L, N)``.
* ``linear_attention``, ``delta_rule``, ``delta_product`` (chunked fast-weight recurrences, docs/ops.md) and
  ``rg_lru(x, r, i, log_a, *, c=8.0, h0=None, reverse=False, backend=None)`` (Griffin's RG-LRU on ``linear_scan``).
* ``selective_scan(u, delta, A, B, C, *, D=None, z=None, h0=None, reverse=False, chunk_size=None, backend=None)``:
  Mamba's ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) ⊗ B_t``, ``y_t = h_t C_t + D u_t`` without the
  ``(B, L, E, N)`` states in memory (``selective_scan_step`` decodes one token).
* ``mlstm(q, k, v, log_f, i, *, initial_state=None, chunk_size=64, backend=None)``: xLSTM's matrix memory with
  exponential gating and the max stabiliser, on ``linear_attention``; state ``(C, n, m)``.
* ``sequence_parallel(op, axis="seq", *, mesh=None)``: ``linear_scan``, ``linear_attention``, ``delta_rule`` or
  ``selective_scan`` with the time axis sharded over a mesh axis (``shard_map``; exact, forward and gradients).
* ``backend``: ``None`` (auto: Pallas on a GPU where it compiles, else XLA) | ``"reference"`` | ``"xla"`` |
  ``"pallas"``; each op has a ``*_reference`` loop. Outputs are float32 for float32/bfloat16 inputs,
  complex64 if any input is complex.

Layout (docs/architecture.md §scan_kernels layout): one private folder per op (``_linear_scan/``,
``_dense_scan/``, ``_linear_attention/``, ``_delta_rule/``, ``_delta_product/``, ``_rg_lru/``, ``_selective_scan/``,
``_mlstm/``, ``_sequence_parallel/``) and the shared pieces in ``_common/``.
Imports run one way, op → ``_common``; an op built on another op imports that op's public name from this
package, which is why the scan core is imported first, in its own block.

Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from algornn.scan_kernels._common.backend import BACKENDS as BACKENDS
from algornn.scan_kernels._common.backend import resolve_backend as resolve_backend
from algornn.scan_kernels._dense_scan import dense_linear_scan as dense_linear_scan
from algornn.scan_kernels._dense_scan import dense_linear_scan_reference as dense_linear_scan_reference
from algornn.scan_kernels._linear_scan import linear_scan as linear_scan
from algornn.scan_kernels._linear_scan import linear_scan_reference as linear_scan_reference

# isort: split
# Ops built on the scan core (they import linear_scan / dense_linear_scan from this package, bound above).
from algornn.scan_kernels._delta_rule import delta_rule as delta_rule
from algornn.scan_kernels._delta_rule import delta_rule_reference as delta_rule_reference
from algornn.scan_kernels._delta_rule import delta_rule_step as delta_rule_step
from algornn.scan_kernels._linear_attention import linear_attention as linear_attention
from algornn.scan_kernels._linear_attention import linear_attention_quadratic as linear_attention_quadratic
from algornn.scan_kernels._linear_attention import linear_attention_reference as linear_attention_reference
from algornn.scan_kernels._linear_attention import linear_attention_step as linear_attention_step
from algornn.scan_kernels._rg_lru import rg_lru as rg_lru
from algornn.scan_kernels._rg_lru import rg_lru_reference as rg_lru_reference
from algornn.scan_kernels._rg_lru import rg_lru_step as rg_lru_step
from algornn.scan_kernels._selective_scan import selective_scan as selective_scan
from algornn.scan_kernels._selective_scan import selective_scan_reference as selective_scan_reference
from algornn.scan_kernels._selective_scan import selective_scan_step as selective_scan_step

# isort: split
# Ops built on the fast-weight ops above (they import delta_rule / linear_attention from this package, bound above).
from algornn.scan_kernels._delta_product import delta_product as delta_product
from algornn.scan_kernels._delta_product import delta_product_reference as delta_product_reference
from algornn.scan_kernels._delta_product import delta_product_step as delta_product_step
from algornn.scan_kernels._mlstm import mlstm as mlstm
from algornn.scan_kernels._mlstm import mlstm_reference as mlstm_reference
from algornn.scan_kernels._mlstm import mlstm_step as mlstm_step

# isort: split
# Sequence parallelism over the ops above (it imports linear_scan, linear_attention, delta_rule, selective_scan).
from algornn.scan_kernels._sequence_parallel import sequence_parallel as sequence_parallel

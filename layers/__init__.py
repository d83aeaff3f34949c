"""layers: Flax NNX sequence mixers, blocks and models built on ``ssm`` and ``scan_kernels``.

Every mixer: ``Mixer(d_model, *, <options with defaults>, dtype=jnp.float32, param_dtype=jnp.float32, rngs)``
(e.g. ``S4D(64, d_state=64, init="inv", mode="conv", bidirectional=False, rngs=nnx.Rngs(0))``; each option is one
line of the class docstring, ``help(S4D)``; the validated record is ``layer.options``, a frozen ``*Options``
dataclass); ``__call__(x (B, L, D), *, dt_scale=1.0) -> (B, L, D)``; ``init_state(batch_size)``;
``step(state, x_t (B, D), *, dt_scale=1.0) -> (state, y_t (B, D))`` (a state of the wrong structure, shape or
dtype raises ``ValueError``). ``python -m algornn.layers`` lists the mixers.

``dtype`` is the compute dtype (inputs are cast to it, outputs come back in it; projections and norms run in it);
``param_dtype`` is the storage dtype of the parameters. Discretisation, kernels, FFT convolutions and scans run in
float32/complex64 whatever ``dtype`` (complex bfloat16 does not exist; the recurrences accumulate in float32).

``dt_scale`` multiplies the step size Δ of the continuous-time mixers S4, S4D, S5, LMU, HiPPORNN, LSSL,
SelectiveSSM and Mamba2 (a sampling-rate change; a positive scalar, which may be traced under ``jit``; LSSL's
``step`` takes ``dt_scale=None`` to reuse the system cached by ``init_state``). LRU, Hawk, MLSTM and the
fast-weight mixers (LinearAttention, DeltaNet, GatedLinearAttention, RetNet, GatedDeltaNet, DeltaProduct) are
discrete-time: ``dt_scale`` must be 1.
The fast-weight mixers share the options ``short_conv``, ``feature_map`` / ``dpfp_nu``, ``qk_norm`` and
``output_gate`` (and ``negative_eigenvalues`` on the delta-rule ones, SelectiveSSM and Mamba2); see
``layers/_fast_weight.py``.
``Attention`` (causal softmax attention with rotary positions, O(L²)) is not a recurrence: it is the baseline of
``BASELINES`` that the experiments compare the mixers with, and takes the same constructor, ``__call__`` and
``step`` (a key/value cache of ``max_len`` tokens).
``bidirectional`` is a constructor option of S4, S4D, S5, LRU, LSSL and SelectiveSSM.
Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from algornn.layers._attention import Attention as Attention
from algornn.layers._attention import AttentionOptions as AttentionOptions
from algornn.layers._block import SequenceBlock as SequenceBlock
from algornn.layers._fast_weight import DeltaNet as DeltaNet
from algornn.layers._fast_weight import DeltaNetOptions as DeltaNetOptions
from algornn.layers._fast_weight import FastWeightOptions as FastWeightOptions
from algornn.layers._fast_weight import GatedLinearAttention as GatedLinearAttention
from algornn.layers._fast_weight import GatedLinearAttentionOptions as GatedLinearAttentionOptions
from algornn.layers._fast_weight import LinearAttention as LinearAttention
from algornn.layers._fast_weight import LinearAttentionOptions as LinearAttentionOptions
from algornn.layers._fast_weight import RetNet as RetNet
from algornn.layers._fast_weight import RetNetOptions as RetNetOptions
from algornn.layers._gated_delta import DeltaProduct as DeltaProduct
from algornn.layers._gated_delta import DeltaProductOptions as DeltaProductOptions
from algornn.layers._gated_delta import GatedDeltaNet as GatedDeltaNet
from algornn.layers._gated_delta import GatedDeltaNetOptions as GatedDeltaNetOptions
from algornn.layers._hawk import Hawk as Hawk
from algornn.layers._hawk import HawkOptions as HawkOptions
from algornn.layers._hippo_rnn import HiPPORNN as HiPPORNN
from algornn.layers._hippo_rnn import HiPPORNNOptions as HiPPORNNOptions
from algornn.layers._lmu import LMU as LMU
from algornn.layers._lmu import LMUOptions as LMUOptions
from algornn.layers._lru import LRU as LRU
from algornn.layers._lru import LRUOptions as LRUOptions
from algornn.layers._lssl import LSSL as LSSL
from algornn.layers._lssl import LSSLOptions as LSSLOptions
from algornn.layers._mamba2 import Mamba2 as Mamba2
from algornn.layers._mamba2 import Mamba2Options as Mamba2Options
from algornn.layers._mlstm import MLSTM as MLSTM
from algornn.layers._mlstm import MLSTMOptions as MLSTMOptions
from algornn.layers._model import SequenceModel as SequenceModel
from algornn.layers._params import is_ssm_param as is_ssm_param
from algornn.layers._params import ssm_param as ssm_param
from algornn.layers._params import ssm_param_labels as ssm_param_labels
from algornn.layers._registry import BASELINES as BASELINES
from algornn.layers._registry import MIXERS as MIXERS
from algornn.layers._registry import describe_mixers as describe_mixers
from algornn.layers._registry import mixer_names as mixer_names
from algornn.layers._registry import resolve_mixer as resolve_mixer
from algornn.layers._s4 import S4 as S4
from algornn.layers._s4 import S4Options as S4Options
from algornn.layers._s4d import S4D as S4D
from algornn.layers._s4d import S4DOptions as S4DOptions
from algornn.layers._s5 import S5 as S5
from algornn.layers._s5 import S5Options as S5Options
from algornn.layers._selective import SelectiveSSM as SelectiveSSM
from algornn.layers._selective import SelectiveSSMOptions as SelectiveSSMOptions

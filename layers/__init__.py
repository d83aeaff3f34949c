"""layers: Flax NNX sequence mixers, blocks and models built on ``ssm`` and ``scan_kernels``.

Every mixer: ``Mixer(d_model, *, rngs, **options)``; ``__call__(x (B, L, D)) -> (B, L, D)``;
``init_state(batch_size)``; ``step(state, x_t (B, D)) -> (state, y_t (B, D))``.
Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from layers._block import SequenceBlock as SequenceBlock
from layers._model import SequenceModel as SequenceModel
from layers._params import is_ssm_param as is_ssm_param
from layers._params import ssm_param as ssm_param
from layers._params import ssm_param_labels as ssm_param_labels
from layers._registry import MIXERS as MIXERS
from layers._fast_weight import DeltaNet as DeltaNet
from layers._fast_weight import GatedLinearAttention as GatedLinearAttention
from layers._fast_weight import LinearAttention as LinearAttention
from layers._fast_weight import RetNet as RetNet
from layers._hippo_rnn import HiPPORNN as HiPPORNN
from layers._lmu import LMU as LMU
from layers._lru import LRU as LRU
from layers._lssl import LSSL as LSSL
from layers._s4 import S4 as S4
from layers._s4d import S4D as S4D
from layers._s5 import S5 as S5
from layers._selective import SelectiveSSM as SelectiveSSM

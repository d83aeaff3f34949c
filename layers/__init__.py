"""layers: Flax NNX sequence mixers, blocks and models built on ``ssm`` and ``scan_kernels``.

Every mixer: ``Mixer(d_model, *, rngs, **options)``; ``__call__(x (B, L, D)) -> (B, L, D)``;
``init_state(batch_size)``; ``step(state, x_t (B, D)) -> (state, y_t (B, D))``.
Shape legend: B batch · L length · D channels · N state size · H heads · K key dim · V value dim · C chunk.
"""

from algornn.layers._block import SequenceBlock as SequenceBlock
from algornn.layers._model import SequenceModel as SequenceModel
from algornn.layers._params import is_ssm_param as is_ssm_param
from algornn.layers._params import ssm_param as ssm_param
from algornn.layers._params import ssm_param_labels as ssm_param_labels
from algornn.layers._registry import MIXERS as MIXERS
from algornn.layers._fast_weight import DeltaNet as DeltaNet
from algornn.layers._fast_weight import GatedLinearAttention as GatedLinearAttention
from algornn.layers._fast_weight import LinearAttention as LinearAttention
from algornn.layers._fast_weight import RetNet as RetNet
from algornn.layers._hippo_rnn import HiPPORNN as HiPPORNN
from algornn.layers._lmu import LMU as LMU
from algornn.layers._lru import LRU as LRU
from algornn.layers._lssl import LSSL as LSSL
from algornn.layers._s4 import S4 as S4
from algornn.layers._s4d import S4D as S4D
from algornn.layers._s5 import S5 as S5
from algornn.layers._selective import SelectiveSSM as SelectiveSSM

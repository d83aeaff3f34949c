"""``MIXERS``: the name -> class table of every sequence mixer, and ``resolve_mixer`` (name or class -> class)."""

from algornn.layers._fast_weight import DeltaNet, GatedLinearAttention, LinearAttention, RetNet
from algornn.layers._gated_delta import DeltaProduct, GatedDeltaNet
from algornn.layers._hawk import Hawk
from algornn.layers._hippo_rnn import HiPPORNN
from algornn.layers._lmu import LMU
from algornn.layers._lru import LRU
from algornn.layers._lssl import LSSL
from algornn.layers._mamba2 import Mamba2
from algornn.layers._mlstm import MLSTM
from algornn.layers._s4 import S4
from algornn.layers._s4d import S4D
from algornn.layers._s5 import S5
from algornn.layers._selective import SelectiveSSM

MIXERS = {
    "s4": S4,
    "s4d": S4D,
    "s5": S5,
    "lru": LRU,
    "lmu": LMU,
    "hippo_rnn": HiPPORNN,
    "lssl": LSSL,
    "linear_attention": LinearAttention,
    "deltanet": DeltaNet,
    "gla": GatedLinearAttention,
    "retnet": RetNet,
    "gated_deltanet": GatedDeltaNet,
    "delta_product": DeltaProduct,
    "selective_ssm": SelectiveSSM,
    "mlstm": MLSTM,
    "mamba2": Mamba2,
    "hawk": Hawk,
}


def resolve_mixer(mixer):
    """A name in ``MIXERS`` or a mixer class (anything with ``__call__``, ``init_state`` and ``step``)."""
    if isinstance(mixer, str):
        if mixer not in MIXERS:
            raise ValueError(f"mixer={mixer!r} is not one of {sorted(MIXERS)}")
        return MIXERS[mixer]
    if isinstance(mixer, type) and all(hasattr(mixer, m) for m in ("__call__", "init_state", "step")):
        return mixer
    raise ValueError(
        f"mixer must be a name in {sorted(MIXERS)} or a mixer class with __call__, init_state and step; got {mixer!r}"
    )


def describe_mixers() -> list[tuple[str, str, str]]:
    """``(registry name, class name, first line of the class docstring)`` for every mixer in ``MIXERS``."""
    rows = []
    for name, cls in MIXERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append((name, cls.__name__, doc[0].strip().replace("``", "") if doc else ""))
    return rows

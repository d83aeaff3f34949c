"""``MIXERS``: the name -> class table of every sequence mixer (the library's recurrences); ``BASELINES``: the
non-recurrent mixers they are compared with (softmax attention); ``resolve_mixer`` (a name in either, or a class
-> class)."""

from algornn.layers._attention import Attention
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

# Not recurrences: O(L²) baselines for the experiments (Zoology's attention on MQAR); same constructor, __call__,
# init_state and step as a mixer.
BASELINES = {"attention": Attention}


def mixer_names() -> list[str]:
    """Every name ``resolve_mixer`` takes: the mixers, then the baselines."""
    return list(MIXERS) + list(BASELINES)


def resolve_mixer(mixer):
    """A name in ``MIXERS`` or ``BASELINES``, or a mixer class (anything with ``__call__``, ``init_state`` and
    ``step``)."""
    if isinstance(mixer, str):
        if mixer not in MIXERS and mixer not in BASELINES:
            raise ValueError(f"mixer={mixer!r} is not one of {sorted(mixer_names())}")
        return MIXERS.get(mixer) or BASELINES[mixer]
    if isinstance(mixer, type) and all(hasattr(mixer, m) for m in ("__call__", "init_state", "step")):
        return mixer
    raise ValueError(
        f"mixer must be a name in {sorted(mixer_names())} or a mixer class with __call__, init_state and step; "
        f"got {mixer!r}"
    )


def describe_mixers(table: dict | None = None) -> list[tuple[str, str, str]]:
    """``(registry name, class name, first line of the class docstring)`` for every mixer in ``table``
    (default ``MIXERS``; ``BASELINES`` for the baselines)."""
    rows = []
    for name, cls in (MIXERS if table is None else table).items():
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append((name, cls.__name__, doc[0].strip().replace("``", "") if doc else ""))
    return rows

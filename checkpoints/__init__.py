"""checkpoints: save / restore / load-for-evaluation on top of Orbax."""

from algornn.checkpoints._manager import FORMAT as FORMAT
from algornn.checkpoints._manager import CheckpointError as CheckpointError
from algornn.checkpoints._manager import CheckpointManager as CheckpointManager
from algornn.checkpoints._manager import find_checkpoint_dir as find_checkpoint_dir
from algornn.checkpoints._manager import load as load

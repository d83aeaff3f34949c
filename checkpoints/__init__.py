"""checkpoints: save / restore / load-for-evaluation on top of Orbax."""

from checkpoints._manager import FORMAT as FORMAT
from checkpoints._manager import CheckpointError as CheckpointError
from checkpoints._manager import CheckpointManager as CheckpointManager
from checkpoints._manager import find_checkpoint_dir as find_checkpoint_dir
from checkpoints._manager import load as load

"""Long-range tasks: LRA generators and loaders, synthetic memory tasks.

``get_task(name, **options) -> Task``; ``list_tasks()``; ``task_options(name)``. See ``_base.py`` for the
batch format and the ordering / padding / sharding rules.
"""

from experiments.tasks._base import IGNORE_INDEX as IGNORE_INDEX
from experiments.tasks._base import SPLITS as SPLITS
from experiments.tasks._base import Task as Task
from experiments.tasks._registry import get_task as get_task
from experiments.tasks._registry import list_tasks as list_tasks
from experiments.tasks._registry import task_options as task_options

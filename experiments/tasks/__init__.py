"""Long-range tasks: LRA generators and loaders, synthetic memory tasks.

``get_task(name, **options) -> Task``; ``list_tasks()``; ``task_options(name)`` (options and defaults).
``Task.batches(split, batch_size, *, seed, epoch=0, start_step=0, shard=(0, 1))`` yields numpy dicts
``{"inputs", "labels", "lengths", "mask"}`` (+ ``"inputs2"``, ``"lengths2"`` when ``task.pair``); see
``_base.py`` for ordering, padding and sharding rules.

  name               source                      inputs               labels            chance
  listops            generated | basic_*.tsv     tokens, vocab 16     10 classes        0.1
  pathfinder, pathx  generated | LRA release     (L, 1) real | pixels 2 classes         0.5
  text               aclImdb/                    bytes, vocab 257     2 classes         0.5
  retrieval          new_aan_pairs.*.tsv         2 x bytes            2 classes         0.5
  image, scifar      cifar-10-batches-py/        (1024, 1 | 3) real   10 classes        0.1
  smnist, psmnist    MNIST IDX files             (784, 1) real        10 classes        0.1
  copying, selective_copying, induction, mqar    tokens               per position (-1 = unscored)
  presence           generated                   tokens, n_symbols+1  2 classes         0.5
  retrieval_capacity generated (Schlag 2021)     tokens               per position      1/n_values
  parity, modular_arithmetic  generated, test rows longer  tokens     per position (last real token)
  adding             generated                   (L, 2) real          regression (MSE)  1/6
  irregular_sine     generated, random times     (L, 1) real + dt     n_classes (16)    1/16
"""

from algornn.experiments.tasks._base import IGNORE_INDEX as IGNORE_INDEX
from algornn.experiments.tasks._base import SPLITS as SPLITS
from algornn.experiments.tasks._base import Task as Task
from algornn.experiments.tasks._registry import get_task as get_task
from algornn.experiments.tasks._registry import list_tasks as list_tasks
from algornn.experiments.tasks._registry import task_options as task_options

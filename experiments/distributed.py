"""Multi-process data parallel: start ``jax.distributed`` and name each process's part of the work.

One training run may span N processes (one per host, or one per accelerator): every process runs the same
``train_and_evaluate``; they share one 1-D ``"data"`` mesh over all their devices (``_train_lib.make_mesh``), each
feeds its shard of every global batch (rows ``[i·B/N, (i+1)·B/N)`` of batch B for process i,
``Task.batches(shard=(i, N))``), Orbax checkpoints are written by all of them together, and process 0 alone writes
``config.json``, ``metrics.jsonl``, ``results.json``, ``curves.png`` and prints.
See docs/distributed.md §What changes with N processes.

``initialize`` starts the runtime from explicit values (``--coordinator HOST:PORT --num-processes N --process-id
I``), from the environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or,
with ``auto=True``, from what ``jax.distributed`` detects of a cluster (SLURM ``srun``, Open MPI ``mpirun``,
Kubernetes, Cloud TPU). It must run before anything touches a JAX device.
"""

import os

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # jax.distributed reads this one itself too
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _check_coordinator(coordinator: str) -> None:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator: expected HOST:PORT (e.g. 10.0.0.1:8476), got {coordinator!r}")


def requested(coordinator=None, num_processes=None, process_id=None, *, auto=False) -> bool:
    """True when the arguments or the ``JAX_*`` environment variables ask for a multi-process run."""
    given = (coordinator, num_processes, process_id)
    env = (os.environ.get(ENV_COORDINATOR), os.environ.get(ENV_NUM_PROCESSES), os.environ.get(ENV_PROCESS_ID))
    return auto or any(v is not None for v in given) or any(v for v in env)


def initialize(coordinator=None, num_processes=None, process_id=None, *, auto=False, timeout_s: int = 300) -> None:
    """Start ``jax.distributed`` for this process (a no-op when it is running already).

    Arguments left ``None`` come from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``;
    with ``auto`` the rest is left to JAX's cluster detection, else all three are required (``ValueError``
    naming the missing ones). ``timeout_s`` bounds the wait for the other processes at start-up.
    On CPU the cross-process collectives are gloo's (JAX's default since 0.5; set here when unset).
    """
    if jax.distributed.is_initialized():
        return
    coordinator = coordinator if coordinator is not None else os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator is not None:
        _check_coordinator(coordinator)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes: expected >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id: expected 0 <= process_id < num_processes={num_processes}, got {process_id}")
    if not auto:
        missing = [
            f"{flag} (or {env})"
            for flag, env, value in (
                ("--coordinator", ENV_COORDINATOR, coordinator),
                ("--num-processes", ENV_NUM_PROCESSES, num_processes),
                ("--process-id", ENV_PROCESS_ID, process_id),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"a multi-process run needs the coordinator address, the number of processes and this process's "
                f"id; missing: {', '.join(missing)}. Under SLURM or mpirun, --distributed detects them"
            )
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


def is_primary() -> bool:
    """True in the one process that writes logs, metrics and results (process 0; also a single process)."""
    return jax.process_index() == 0


def process_shard() -> tuple[int, int]:
    """``(process index, process count)``: this process's part of every global batch (``Task.batches(shard=)``)."""
    return jax.process_index(), jax.process_count()

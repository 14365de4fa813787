"""A training process's device: its TensorFlow threads, its GPU and its precision.

Each must be set before TensorFlow starts its runtime. A GPU is chosen by the environment a
process starts with (`gpu_env`, CUDA_VISIBLE_DEVICES): a supervisor gives it to the worker
processes it starts, and a process entry point (`search worker --gpu N`) sets it for itself
before anything imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence


def configure_threads(n_threads: int) -> bool:
    """Limit TensorFlow's threads (0: its default, all cores); False if it has started.

    A notebook that trained a model already cannot change them: the threads stay as they
    are, and a trial's recorded thread count says what it ran with.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(n_threads, 2))
    except RuntimeError:  # TensorFlow has started already
        return False
    return True


def gpu_env(gpu: str) -> dict[str, str]:
    """The environment that gives a process one GPU, whose memory it takes as it needs it."""
    return {"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def worker_env(
    slot: int, gpus: Sequence[str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A worker process's environment: `base` (this one's), and with `gpus` one of them.

    Slots take the GPUs in turn, so with K workers per GPU each GPU has K of them.
    """
    env = {**(os.environ if base is None else base)}
    env |= {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    if gpus:
        env |= gpu_env(gpus[slot % len(gpus)])
    return env


def configure_device(*, threads: int, mixed_precision: bool = False) -> None:
    """A training process's threads and precision; must run before TensorFlow starts.

    Args:
        mixed_precision: float16 compute (Keras' mixed_float16); ignored with a warning
            where no GPU is visible, as it only slows a CPU down.
    """
    configure_threads(threads)
    if mixed_precision:
        import keras
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("warning: --mixed-precision is ignored: no GPU is visible", file=sys.stderr)


def hide_gpus() -> None:
    """Keep a process that trains nothing (a supervisor, `search create`) off the GPUs.

    TensorFlow takes the memory of every GPU it sees when it starts; checking a folder's
    images starts it.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow has started already; nothing to be done here
        pass


def default_threads(n_workers: int) -> int:
    """Threads per worker when not given: this machine's cores shared among the workers."""
    return max(1, (os.cpu_count() or 1) // n_workers)

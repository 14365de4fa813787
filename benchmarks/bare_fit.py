"""Bare `model.fit` of model_b on a study's data: the baseline of the overhead benchmark.

Fits as a worker's trials do, in one process with the session cleared and the seed set
before each fit, but with no Optuna, no callbacks and no storage. Prints a JSON line:
the number of training images and the seconds of each fit.

    python -m benchmarks.bare_fit STUDY.toml --threads N --repeats K
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import keras

from benchmarks import fixed_space
from search.config import load_config
from search.data import load_study_data
from search.device import configure_threads


def bare_fits(study_file: str, *, repeats: int) -> dict[str, Any]:
    """Fit model_b `repeats` times for the study's max_epochs; time each fit."""
    config = load_config(study_file)
    data = load_study_data(config.data)
    seconds = []
    for i in range(repeats):
        keras.backend.clear_session()
        gc.collect()
        # The seeds the study's trials 0, 1, ... use.
        keras.utils.set_random_seed(config.study.seed + i)
        model = fixed_space.build(fixed_space.CONFIG, data.input_shape, data.num_classes)
        start = time.monotonic()
        model.fit(
            data.train.x,
            data.train.y,
            batch_size=fixed_space.CONFIG["batch_size"],
            epochs=config.trials.max_epochs,
            validation_data=(data.val.x, data.val.y),
            verbose=0,
        )
        seconds.append(time.monotonic() - start)
    return {"n_train": len(data.train), "fit_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_file", metavar="STUDY.toml")
    parser.add_argument("--threads", type=int, required=True, help="TensorFlow threads")
    parser.add_argument("--repeats", type=int, required=True, help="fits, each timed")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    print(json.dumps(bare_fits(args.study_file, repeats=args.repeats)))


if __name__ == "__main__":
    main()

"""KerasTuner's Hyperband over the study's space: the tool a Keras user would pick instead.

Not a translation of the space but the space itself: KerasTuner's HyperParameters answer
the `suggest_*` calls of the space's `suggest` (`spaces.conv` in the benchmark), and its
`build` builds the model, so the layers, ranges and choices are the Optuna contestants'.
The data split, the seed and max_epochs come from the same study file. Each trial's begin
and end go to a JSON-lines file as they happen; the benchmark kills this process when its
budget is spent.

    python -m benchmarks.kerastuner_conv STUDY.toml --events FILE --directory DIR --threads N
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from search.config import load_config
from search.data import Dataset, load_study_data
from search.device import configure_threads
from search.training import learning_rate_callbacks
from spaces import load_space

# Hyperband's halving rate, as the Optuna contestant's HyperbandPruner(reduction_factor=3).
FACTOR = 3
# Brackets repeat until the budget kills the process, as Optuna studies run until their timeout.
HYPERBAND_ITERATIONS = 1000


class HyperParametersTrial:
    """The `suggest_*` calls of an Optuna trial, answered by KerasTuner's HyperParameters."""

    def __init__(self, hp: kt.HyperParameters) -> None:
        self.hp = hp

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self.hp.Int(name, low, high, sampling="log" if log else "linear")

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.hp.Float(name, low, high, sampling="log" if log else "linear")

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self.hp.Choice(name, list(choices))


class SpaceHyperModel(kt.HyperModel):
    """A space as a KerasTuner HyperModel, trained as a trial of the service trains."""

    def __init__(self, space: Any, data: Dataset, max_epochs: int) -> None:
        super().__init__()
        self.space = space
        self.data = data
        self.max_epochs = max_epochs

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        config = self.space.suggest(HyperParametersTrial(hp))
        return self.space.build(config, self.data.input_shape, self.data.num_classes)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs):
        # The values `build` drew for this trial: the batch size and learning-rate schedule.
        config = self.space.suggest(HyperParametersTrial(hp))
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            *learning_rate_callbacks(config, schedule_epochs=self.max_epochs),
            *kwargs.pop("callbacks", []),
        ]
        return model.fit(
            self.data.train.x,
            self.data.train.y,
            batch_size=config["batch_size"],
            validation_data=(self.data.val.x, self.data.val.y),
            callbacks=callbacks,
            **kwargs,
        )


class LoggedHyperband(kt.Hyperband):
    """Hyperband that appends each trial's begin and end (time, score, epochs) to a file."""

    def __init__(self, *args, events: Path, **kwargs) -> None:
        self.events = events
        super().__init__(*args, **kwargs)

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        self._log("begin", trial)

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        score = self.oracle.get_trial(trial.trial_id).score
        self._log("end", trial, status=trial.status, score=score)

    def _log(self, event: str, trial: kt.engine.trial.Trial, **fields: Any) -> None:
        values = trial.hyperparameters.values
        record = {
            "event": event,
            "time": time.time(),
            "trial_id": trial.trial_id,
            # A later round of a bracket continues an earlier trial's model.
            "continues": values.get("tuner/trial_id"),
            "initial_epoch": values["tuner/initial_epoch"],
            "epochs": values["tuner/epochs"],
            **fields,
        }
        with self.events.open("a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_file", metavar="STUDY.toml")
    parser.add_argument("--events", type=Path, required=True, help="JSON-lines file to append")
    parser.add_argument("--directory", required=True, help="KerasTuner's project directory")
    parser.add_argument("--threads", type=int, required=True, help="TensorFlow threads")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    config = load_config(args.study_file)
    keras.utils.set_random_seed(config.study.seed)
    tuner = LoggedHyperband(
        SpaceHyperModel(
            load_space(config.study.space), load_study_data(config.data), config.trials.max_epochs
        ),
        objective=config.study.metric,
        max_epochs=config.trials.max_epochs,
        factor=FACTOR,
        hyperband_iterations=HYPERBAND_ITERATIONS,
        seed=config.study.seed,
        directory=args.directory,
        project_name=config.name,
        overwrite=True,
        events=args.events,
    )
    tuner.search(verbose=0)


if __name__ == "__main__":
    main()

"""Your own Keras model, tuned on arrays in memory by 2 workers; the best is tested once."""

import keras

import search
from search.data import fashion_mnist


def suggest(trial):
    lr = trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True)
    return {"units": trial.suggest_int("units", 32, 256, log=True), "learning_rate": lr}


def build(config, input_shape, num_classes):
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255)])
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(config["units"], activation="relu"))
    model.add(keras.layers.Dense(num_classes, activation="softmax"))
    return search.compile_model(model, {"optimizer": "adam", **config})


(x_train, y_train), (x_test, y_test) = fashion_mnist()
data = (x_train[:5000], y_train[:5000], x_test, y_test)
space = search.Space(suggest, build)
study = search.create_study("mlp", space=space, data=data, n_trials=4, max_epochs=3)
study.optimize(workers=2)
print("best trial:", study.best_trial.params, study.best_model().count_params(), "weights")
print("test accuracy:", study.retrain().test_accuracy)

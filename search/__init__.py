"""search: hyperparameter search for Keras image classifiers on Optuna."""

import os

# TensorFlow's C++ INFO notes (CPU features, oneDNN) would drown every command's output;
# set before anything imports TensorFlow. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

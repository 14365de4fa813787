"""A loss for integer labels with label smoothing, which Keras' sparse loss lacks.

Registered with Keras, so a saved model that trained with it loads wherever this module
was imported first (`import spaces.losses`, then `keras.models.load_model`).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="spaces")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against probabilities, the labels smoothed.

    The same as `CategoricalCrossentropy(label_smoothing=s)` on one-hot labels: the true
    class gets 1 - s + s/K, every class s/K.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_ce", **kw):
        super().__init__(name=name, **kw)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        num_classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        one_hot = keras.ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return super().get_config() | {"label_smoothing": self.label_smoothing}

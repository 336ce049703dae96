"""Knowledge distillation: train a pruned (or sparsifying) model to match the unpruned one.

:class:`Distiller` wraps a student and a frozen teacher in one ``keras.Model``.
``fit`` minimises the compiled loss of the student *plus* the distillation term
of Hinton et al. (2015)::

    loss = compiled_loss(y, student(x)) + weight · T² · KL(softmax(t/T) ‖ softmax(s/T))

with ``t``, ``s`` the teacher's and the student's logits on the same (augmented)
batch. Everything this library does during training sees the student:
:class:`~tf_gamma_prune.GammaISTA` finds the student's BatchNormalization γ
(the teacher is not trainable), :class:`~tf_gamma_prune.CostTarget` counts the
student's MACs, and ``prune_model(distiller.student)`` prunes it.

Both models must output logits (no softmax at the end). The teacher is set
``trainable = False`` (the caller's object: pass a copy to keep it trainable).

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune.sparsify.distillation import Distiller
>>> def net():
...     x = keras.Input((4,))
...     return keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(8, "relu")(x)))
>>> teacher, student = net(), net()
>>> distiller = Distiller(student, teacher, temperature=4.0, weight=1.0)
>>> distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x, y = np.random.rand(32, 4).astype("float32"), np.zeros(32, "int32")
>>> _ = distiller.fit(x, y, epochs=1, verbose=0)
>>> distiller.student is student and not teacher.trainable
True
"""

from __future__ import annotations

from typing import Any

import keras

from tf_gamma_prune.errors import ArgumentError


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class Distiller(keras.Model):
    """A student trained against a frozen teacher's softened logits.

    Args:
        student: the model being trained (and later pruned); outputs logits.
        teacher: the model it imitates (e.g. the unpruned reference); outputs
            logits of the same shape. Frozen (``trainable = False``) and run in
            inference mode.
        temperature: softening temperature ``T`` (> 0).
        weight: weight of the distillation term (≥ 0) relative to the compiled
            loss; 0 trains the student alone.

    ``distiller(x)`` is ``student(x)``; metrics compare the student's output
    with ``y``. Save the student (``distiller.student.save(...)``) for
    deployment; the distiller itself is serializable with both models.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 4.0,
                 weight: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise TypeError(f"Distiller's {role} must be a keras.Model, got {model!r}.")
        if student is teacher:
            raise ArgumentError("Distiller needs two different models: the teacher is frozen, "
                                "so it cannot also be the student. Pass a copy as the teacher.")
        if not float(temperature) > 0:
            raise ArgumentError(f"temperature must be > 0, got {temperature!r}.")
        if not float(weight) >= 0:
            raise ArgumentError(f"weight must be >= 0, got {weight!r}.")
        teacher.trainable = False
        self.student, self.teacher = student, teacher
        self.temperature, self.weight = float(temperature), float(weight)
        self.built = student.built and teacher.built

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        task = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)
        if self.weight == 0:
            return task
        return task + self.weight * self.distillation_loss(self.teacher(x, training=False), y_pred)

    def distillation_loss(self, teacher_logits, student_logits):
        """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch."""
        ops, t = keras.ops, self.temperature
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_logits = ops.cast(student_logits, "float32")
        p_teacher = ops.softmax(teacher_logits / t, axis=-1)
        log_ratio = ops.log_softmax(teacher_logits / t, axis=-1) - ops.log_softmax(
            student_logits / t, axis=-1)
        return t * t * ops.mean(ops.sum(p_teacher * log_ratio, axis=-1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature, "weight": self.weight}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        student = keras.saving.deserialize_keras_object(config.pop("student"),
                                                        custom_objects=custom_objects)
        teacher = keras.saving.deserialize_keras_object(config.pop("teacher"),
                                                        custom_objects=custom_objects)
        return cls(student, teacher, **config)


def model_being_trained(model: keras.Model) -> keras.Model:
    """The model whose channels are pruned: a :class:`Distiller`'s student, else ``model``.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model_being_trained(m) is m
    True
    """
    while isinstance(model, Distiller):
        model = model.student
    return model

"""Keras callbacks of sanp_keras."""

from sanp_keras.callbacks.budget import BudgetCallback as BudgetCallback

"""The model registry: `register_model`, `create_model`, `list_models`."""

from sanp_keras.convert import convert

_MODELS = {}


def register_model(fn):
    """Registers a builder `fn(num_classes, input_shape) -> plain keras.Model` by name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"Model '{fn.__name__}' is already registered.")
    _MODELS[fn.__name__] = fn
    return fn


def list_models():
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def create_model(name, num_classes=10, gated=True, input_shape=(32, 32, 3), mode="sanp",
                 **gate_options):
    """Builds a registered model.

    Args:
        name: one of `list_models()`.
        num_classes: number of classes; the model outputs logits.
        gated: whether every conv + batch norm becomes an `SPMConv2D` (through
            `sanp_keras.convert`, as for a user's model).
        input_shape: `(height, width, channels)`.
        mode, **gate_options: passed to `sanp_keras.convert` when `gated`.

    Returns:
        A functional `keras.Model` with hierarchical layer names
        (`stage1.block1.conv1`...).
    """
    if name not in _MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {list_models()}. Received: name={name!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            "Invalid value for argument `num_classes`. Expected an integer >= 1. "
            f"Received: num_classes={num_classes!r}"
        )
    model = _MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))
    if gated:
        model = convert(model, mode=mode, on_unsupported="raise", **gate_options)
    return model

"""Argument checks shared by the layers: every error names the argument and echoes
the value received, as Keras does."""

MODES = ("sanp", "fixed_k", "static", "fbs", "dense")


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(
            f"Invalid value for argument `mode`. Expected one of {MODES}. "
            f"Received: mode={mode!r}"
        )
    return mode


def check_int_at_least(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_float_in(name, value, low, high, low_open=True, high_open=False):
    """Checks `low < value <= high` (bounds' openness configurable)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a float in "
            f"{left}{low}, {high}{right}. Received: {name}={value!r}"
        )
    return float(value)


def check_channels_last(data_format, layer_name):
    if data_format not in (None, "channels_last"):
        raise ValueError(
            f"Invalid value for argument `data_format` of layer '{layer_name}'. "
            "sanp_keras gates channels_last tensors (B, H, W, C) only. "
            f"Received: data_format={data_format!r}"
        )


def check_image_shape(input_shape, layer_name):
    """Input must be rank 4 (B, H, W, C) with a known channel count."""
    if len(input_shape) != 4:
        raise ValueError(
            f"Layer '{layer_name}' expects inputs of rank 4 (B, H, W, C). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if input_shape[-1] is None:
        raise ValueError(
            f"Layer '{layer_name}' needs a known number of input channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return int(input_shape[-1])

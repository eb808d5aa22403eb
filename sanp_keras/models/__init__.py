"""The model zoo: `create_model(name, num_classes=10, gated=True)`, `list_models()`;
trained weights shipped with the package: `pretrained(name)`, `list_pretrained()`."""

from sanp_keras.models import cifarnet as _cifarnet  # noqa: F401 (registers)
from sanp_keras.models import mobilenet as _mobilenet  # noqa: F401 (registers)
from sanp_keras.models import resnet as _resnet  # noqa: F401 (registers)
from sanp_keras.models import vgg as _vgg  # noqa: F401 (registers)
from sanp_keras.models.registry import create_model as create_model
from sanp_keras.models.registry import list_models as list_models
from sanp_keras.models.registry import register_model as register_model
from sanp_keras.models.shipped import describe_pretrained as describe_pretrained
from sanp_keras.models.shipped import list_pretrained as list_pretrained
from sanp_keras.models.shipped import pretrained as pretrained
from sanp_keras.models.shipped import save_pretrained as save_pretrained

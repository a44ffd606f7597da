"""The model zoo: blocks by name, a registry, VGG / ResNet / wide ResNet / ResNet-9 / simple nets.

Importing this package imports torch and registers every model family::

    from cnnlab.models import create_model, list_models
    model = create_model("resnet20", num_classes=10, in_chans=3, norm="group:8", act="gelu")
    rebuilt = model_from_args(model.model_args)   # same architecture, e.g. from a checkpoint

The transfer family (a pretrained backbone + a new head, :mod:`cnnlab.models.transfer`) is
registered too, as the unlisted model ``transfer``; timm, torchvision's model zoo and the
offline EfficientNet-Lite0 weights are imported only when a backbone is built.
"""

# Importing the family modules registers their models; this order is `cnnlab models`' order.
from cnnlab.models import simple  # noqa: F401, I001
from cnnlab.models import vgg  # noqa: F401
from cnnlab.models import resnet  # noqa: F401
from cnnlab.models import resnet_cifar  # noqa: F401
from cnnlab.models import wide  # noqa: F401
from cnnlab.models import fast  # noqa: F401
from cnnlab.models import transfer  # noqa: F401
from cnnlab.models.base import ClassifierModel
from cnnlab.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from cnnlab.models.saved import model_from_args, model_from_checkpoint

__all__ = [
    "ClassifierModel", "ModelInfo", "create_model", "list_models", "model_from_args", "model_from_checkpoint",
    "model_info", "register_model",
]  # fmt: skip

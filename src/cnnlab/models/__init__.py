"""The model zoo: blocks by name, a registry, VGG / ResNet / wide ResNet / simple nets.

Importing this package imports torch and registers every model family::

    from cnnlab.models import create_model, list_models
    model = create_model("resnet20", num_classes=10, in_chans=3, norm="group:8", act="gelu")
    rebuilt = create_model(**model.model_args)   # same architecture, e.g. from a checkpoint
"""

# Importing the family modules registers their models; this order is `cnnlab models`' order.
from cnnlab.models import simple  # noqa: F401, I001
from cnnlab.models import vgg  # noqa: F401
from cnnlab.models import resnet  # noqa: F401
from cnnlab.models import resnet_cifar  # noqa: F401
from cnnlab.models import wide  # noqa: F401
from cnnlab.models.base import ClassifierModel
from cnnlab.models.registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ClassifierModel", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]

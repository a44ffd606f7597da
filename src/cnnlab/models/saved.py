"""Models rebuilt from what a checkpoint stores: ``model_args`` and a state dict.

Every cnnlab model records how it was built in ``model.model_args``; the registry rebuilds
the architecture from them alone (transfer models too: they are registered as
``transfer``), so reading a checkpoint needs neither the code that trained it nor a download.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.models.base import ClassifierModel
from cnnlab.models.registry import create_model
from cnnlab.models.user import is_user_model, rebuild_user_model


def model_from_args(model_args: dict[str, Any]) -> ClassifierModel:
    """An untrained model with the architecture ``model_args`` describes.

    Args:
        model_args: ``{"name": ..., **options}`` as recorded in ``model.model_args``.

    Raises:
        CnnlabError: unknown model name or option (e.g. a checkpoint of a newer cnnlab).
    """
    args = dict(model_args)
    if is_user_model(args.get("name")):  # user code runs only when the user names it, never because a file does
        return rebuild_user_model(args)  # type: ignore[return-value]
    return create_model(args.pop("name"), **args)


def model_from_checkpoint(state: dict[str, Any]) -> ClassifierModel:
    """Rebuild the model a checkpoint describes and load its weights.

    Args:
        state: a checkpoint as :func:`cnnlab.checkpoint.load_checkpoint` returns it
            (``model_args`` and the ``model`` state dict).

    Raises:
        CnnlabError: the architecture cannot be rebuilt, or the weights do not fit it.
    """
    model = model_from_args(state["model_args"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        name = state["model_args"].get("name")
        raise CnnlabError(f"the checkpoint's weights do not fit its model '{name}': {str(exc)[:200]}") from None
    return model

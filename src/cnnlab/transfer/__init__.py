"""Transfer learning (seed section 9): cached feature extraction, fine-tuning with
discriminative learning rates, and an automatic choice between them.

``cnnlab train --model efficientnet_lite0 --pretrained --transfer auto`` on the command
line; in Python, :func:`cnnlab.run.run_training` with a config whose ``transfer``
section (or ``model.pretrained``) asks for it, or the pieces below:

* :mod:`cnnlab.transfer.features`: the feature cache and its loader;
* :mod:`cnnlab.transfer.finetune`: the modes and :func:`fit_transfer`.

The models themselves are a model family like any other: :mod:`cnnlab.models.backbones`
(timm / torchvision / offline EfficientNet-Lite0 / cnnlab checkpoints as backbones) and
:mod:`cnnlab.models.transfer` (:class:`~cnnlab.models.transfer.TransferModel`, any backbone
behind cnnlab's model contract, with the backbone's own preprocessing done on the device).

Nothing heavy is imported here (timm is imported only when a timm backbone is built).
"""

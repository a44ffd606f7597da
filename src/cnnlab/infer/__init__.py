"""Using a trained model: evaluate it, predict image files, export it.

Import from the submodules (this package imports nothing itself, so the CLI stays fast)::

    from cnnlab.infer.predict import load_predictor, find_images
    from cnnlab.infer.evaluate import evaluate_checkpoint, write_report
    from cnnlab.infer.export import export_model, load_safetensors_model
"""

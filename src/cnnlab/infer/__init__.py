"""Using a trained model: evaluate it, predict image files, export it.

Import from the submodules (this package imports nothing itself, so the CLI stays fast)::

    from cnnlab.infer.saved import read_saved_model, load_safetensors_model
    from cnnlab.infer.predict import load_predictor, find_images
    from cnnlab.infer.evaluate import evaluate_checkpoint, plan_evaluation, write_report
    from cnnlab.infer.export import export_model
    from cnnlab.infer.outputs import check_output_file, check_output_dir

``saved`` is the one reader of saved models (checkpoints, run folders, safetensors
exports); ``predict`` feeds a saved model images as training did; ``evaluate`` and
``export`` build on ``predict``; ``outputs`` checks every path they (and ``data show``)
write before any work, so that no output replaces a run's files or a user's.
"""

"""The lecture's 7-step hyperparameter procedure: check, overfit, lr-find, search (coarse, refine), diagnose, loop."""

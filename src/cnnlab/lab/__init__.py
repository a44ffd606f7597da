"""The lab: each claim of the lecture as an experiment with a table, a plot and a verdict."""

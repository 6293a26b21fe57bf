"""What the scores say: ROC metrics (metrics.py) and the evaluation of a scores folder (evaluate.py), dataset
inference over a suspect set (dataset_inference.py), a fine-tune set against its base (compare.py), the cost of an
audit before it runs (estimate.py), and the figures they draw (plots.py)."""

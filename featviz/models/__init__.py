"""What to run: build a model by name, file or factory; weights, checkpoints, preprocessing."""

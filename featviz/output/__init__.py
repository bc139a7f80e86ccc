"""Pictures, results and the one writer: render, PNG, layout, the pipeline, export and report."""

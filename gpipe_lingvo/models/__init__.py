"""Networks built as flat lists of cells (the units the pipeline cuts)."""

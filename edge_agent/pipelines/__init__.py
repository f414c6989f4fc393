"""Pipelines bind a source to a model: features or frames in, predictions, recommendations
and defects out, all behind one interface (`base.Pipeline`)."""

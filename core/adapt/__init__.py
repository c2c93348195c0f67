"""Fitting an index's model to the analyst's own archive and labels (issue 26), without torch."""

"""Notebook helpers: the papermill runner, results recording and training from a notebook."""

"""``make bench``: lacrima measured as a user runs it (``python -m bench``; see ``bench.bench``)."""

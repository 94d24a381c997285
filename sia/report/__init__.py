"""``python -m sia.report``: compare the runs of a sweep or an outputs folder (see __main__)."""

"""Data shipped with logitcache: the UCI handwritten digits (see make_digits.py)."""

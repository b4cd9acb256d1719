"""Pure numpy / scikit-image functions that turn data into images.

Nothing here does I/O or imports from ``scoring`` or ``server``: the data flow is
``server → scoring → renderer``.
"""

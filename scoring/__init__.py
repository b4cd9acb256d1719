"""Models, training and evaluation, and the render-then-score worker pipelines.

``scoring`` may import ``renderer`` but never ``server``.
"""

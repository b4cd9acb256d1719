"""Render-then-score pipelines run by the worker framework (:mod:`scoring.worker`).

Each pipeline lives in its own module (``mouse``, ``pump``, ``whale``) and subclasses
:class:`scoring.pipelines.base.Pipeline`. ``PIPELINES`` maps names to ``module:Class``.
"""

PIPELINES = {
    "mouse": "scoring.pipelines.mouse:MousePipeline",
    "pump": "scoring.pipelines.pump:PumpPipeline",
    "whale": "scoring.pipelines.whale:WhalePipeline",
}

"""One evaluator for every model: zero-shot classification, retrieval, Winoground, MMVP-VLM, MMEB, kNN.

What other packages read from here: :class:`EvalResult` (a result file) and the tables built from result
files (:func:`metrics_table`, :func:`report_table`).
"""

from evaluate.results import EvalResult, metrics_table, report_table

__all__ = ["EvalResult", "metrics_table", "report_table"]

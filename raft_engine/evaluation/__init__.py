"""Evaluation on the standard datasets in their own layouts, with the published protocol: `datasets`
finds the pairs and ground truth as distributed, `metrics` holds the measures, `runner` runs an
estimator over a dataset's splits (`evaluate`), `submission` writes the benchmark servers' test-set
files (`write_submission`)."""

from raft_engine.evaluation.metrics import Tally, end_point_error, fl_outliers, format_table
from raft_engine.evaluation.runner import evaluate
from raft_engine.evaluation.submission import write_submission

__all__ = ["Tally", "end_point_error", "evaluate", "fl_outliers", "format_table", "write_submission"]

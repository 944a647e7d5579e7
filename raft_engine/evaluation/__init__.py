"""Evaluation on the standard datasets in their own layouts, with the published protocol."""

from raft_engine.evaluation.runner import Tally, end_point_error, evaluate, fl_outliers, format_table, write_submission

__all__ = ["Tally", "end_point_error", "evaluate", "fl_outliers", "format_table", "write_submission"]

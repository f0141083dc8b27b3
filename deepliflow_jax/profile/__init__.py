"""Profiling: Table I counts (params, conv layers, FLOPs) and forward timing."""

from deepliflow_jax.profile.table1 import PAPER_TABLE1, format_profile_table, profile_model

__all__ = ["PAPER_TABLE1", "format_profile_table", "profile_model"]

"""Judging answers and pairs, no Ray: the judges, the refusal rule, the list of measures."""

"""Orchestration: the single controller and the workers it drives (Ray actors or inline)."""

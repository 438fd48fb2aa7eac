"""Judging scheduling policies where the truth is known: simulated worlds (`world`) and the
arena that drives every policy through the real `SchedulerService` (`arena`)."""

"""``alice compare``: a reproducible study of Alice against common optimizers on real
offline tasks (tasks, optimizers, runner, records, stats, plots, report). It uses only
the public names of :mod:`alice`; nothing here is imported by the optimizer."""

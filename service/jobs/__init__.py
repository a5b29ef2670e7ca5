"""Asynchronous jobs (docs/api.md, "Jobs" and "Webhooks"): ``store`` (the Job document, kept in this
process or in Redis), ``runner`` (one ``AnalysisCore.analyze`` call per job, with progress,
cancellation and bounds), ``webhooks`` (signed deliveries with retries), ``metrics``. The REST routes are
``service/rest/routes/jobs.py``."""

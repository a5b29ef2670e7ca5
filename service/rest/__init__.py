"""The REST door: FastAPI over the analysis core (docs/api.md). ``app.create_app`` assembles it."""

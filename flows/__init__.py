"""Prefect wiring of lacrima: flows and tasks only; the logic lives in ``lacrima``."""

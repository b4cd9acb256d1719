"""The Starlette service: collector ingestion, review queue, alerts and JSON API."""

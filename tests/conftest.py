"""Fixtures shared across the test tree."""

from tests.pg import postgres_server, postgres_url  # noqa: F401  (a throwaway PostgreSQL: tests/pg.py)

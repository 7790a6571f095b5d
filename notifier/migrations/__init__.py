"""Alembic migrations of the consultation record (see :mod:`notifier.store`)."""

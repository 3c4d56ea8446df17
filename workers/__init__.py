"""Celery workers: a thin task over the plain ``run_job`` function."""

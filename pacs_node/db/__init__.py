"""The job database: typed models, session factory, repository and migrations."""

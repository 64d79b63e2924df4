"""Model components and the embedded model zoo."""

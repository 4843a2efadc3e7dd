"""HTTP routes, one module per resource (FastAPI "bigger applications" layout)."""

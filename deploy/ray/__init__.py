"""The Ray Serve deployment of the service (``serve run deploy/ray/serve.yaml``)."""

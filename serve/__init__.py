"""Ray Serve entry points: the deployment (serve.app) and a Python launcher (serve.deploy)."""

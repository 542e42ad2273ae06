"""How requests are served: fleet -> Ray Serve LLM app, router, auth, metrics."""

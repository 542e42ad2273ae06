"""How requests are served: fleet -> Ray Serve LLM app, ingress, auth, metrics."""

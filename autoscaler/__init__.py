"""How the fleet scales: the Ray Serve autoscaling policy and its trace-driven simulator."""

"""Canary migration of a route from a baseline arm to a candidate.

`machine` (the pure state machine) · `gates` (pure gate evaluation) · `metrics` (the Prometheus
metric provider) · `quality` (golden-set runs) · `store` (where the rollout document lives) ·
`actuators` (apply weights and replica floors: local Serve or KubeRay) · `kube` (RayService
read-modify-write) · `controller` (the loop that ties them) · `ab` (A/B report).
"""

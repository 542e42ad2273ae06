"""How the fleet adapts: scaling policy, rollout controller, gates."""

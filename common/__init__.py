"""Leaf helpers that every layer may import, loadtests included; imports no other corral package.

Numbers (quantiles, intervals, tests), workloads (the shipped Azure trace and its thinning) and
the OpenAI HTTP client (`openai_http`) have one home here so that the serving path, the
autoscaler simulator, the rollout analysis and quality gate, the load generator and the
benchmarks compute and measure them the same way.
"""

"""Leaf helpers that every layer may import, loadtests included; imports no other corral package.

Numbers (quantiles, intervals, tests) and workloads (the shipped Azure trace and its thinning)
have one home here so that the serving path, the autoscaler simulator, the rollout analysis, the
load generator and the benchmarks compute them the same way.
"""

"""Measuring a fleet from outside, over HTTP only (locust, capacity planner). Imports no other corral package."""

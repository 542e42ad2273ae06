"""corral: an orchestrator for Llama fleets. The CLI (corral.cli) ties the packages together."""
__version__ = "0.1.0"

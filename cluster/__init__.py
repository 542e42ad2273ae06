"""Where things run: fleet spec, model and GPU catalogs, parallelism planner, placement, KubeRay manifests."""

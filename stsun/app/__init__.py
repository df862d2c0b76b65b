"""Applications on top of the runtime: the CLI, the build pipeline, predict-many and its manifests."""

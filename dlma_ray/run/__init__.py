"""A run on disk or object storage: every path of it, state.json, the writer's lock, the experiment trackers."""

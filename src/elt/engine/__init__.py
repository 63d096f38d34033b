"""The engine: runs trained, sampled and evaluated — one file a job, named for it (docs/architecture.md)."""

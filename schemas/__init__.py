"""The contracts shared by the stream worker and batch training: records, topics, artifacts."""

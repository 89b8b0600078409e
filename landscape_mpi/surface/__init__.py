"""The surface job: pre-flight, the file step and resume identity, the run top to bottom."""

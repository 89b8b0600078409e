"""The project's HDF5 files: names (contract), readers and writers, the durable write protocol. No torch."""

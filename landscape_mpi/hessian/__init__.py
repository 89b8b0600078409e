"""The hessian job: Hessian analyses of checkpoints into one HDF5 file (`landscape-mpi hessian`)."""

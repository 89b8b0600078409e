"""The curvature library: Hessian-vector products (one process, MPI ranks, a sharded model) and the Krylov numerics."""

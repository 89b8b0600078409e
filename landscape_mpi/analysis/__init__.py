"""Analyses: Hessian products and Krylov numerics, the hessian job, sharpness numbers from files."""

"""Figures and exports of landscape-mpi surface files. Reads only the HDF5 file: no torch, no MPI."""

"""Simulation engines (SimPy reference engine) and the pieces they are built from."""

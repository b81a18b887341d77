"""Encoder plugins, their registry and the HPC encode job (no database imports here)."""

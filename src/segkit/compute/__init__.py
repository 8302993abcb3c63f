"""The machine: devices, precision, distributed ranks, memory sizing, the process pool of the per-image passes."""

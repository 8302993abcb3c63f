"""The machine: devices, precision, distributed ranks and memory sizing."""

"""The cost of a backbone, measured on this machine: speed, latency, memory, parameters, FLOPs, sizes."""

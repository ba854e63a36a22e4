"""Models and their math, no Ray: loading, log-prob gathering, the scorer's packing, LoRA, training checkpoints, memory sizing, tiny test models."""

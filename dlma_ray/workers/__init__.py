"""What runs inside a Ray actor, task or train worker: vLLM engines, generation, scoring, training, evaluation tasks, sentence embeddings, device choice, and the metrics they record."""

"""The vocabulary every layer shares: prompt pairs and their renderings, the table schemas, local/URI files, the loss math, intervals. Imports nothing else from the project."""

"""Reading a finished or running run: the report and its figures, the comparison, TRL export, the model card, the config reference."""

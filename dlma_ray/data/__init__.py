"""Where prompts and preference records come from: readers, formats, records and parsing, Self-Contrast's negatives."""

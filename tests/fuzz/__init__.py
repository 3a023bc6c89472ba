"""Property-based fuzzing of the client stream: generated and mutated input, checked for clean endings."""

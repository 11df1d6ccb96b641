"""Sans-I/O core tests: codecs, golden .NET captures, SecurityContext, Connection, tampering, fuzzing."""

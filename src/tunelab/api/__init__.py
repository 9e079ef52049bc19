"""tunelab's OpenAI-compatible HTTP API (FastAPI). Importing it imports no torch: the engine is passed in."""

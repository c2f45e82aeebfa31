"""Tool calling: a parser per model format (registry.py), the schemas that constrain
``tool_choice`` "required" and named calls (forced.py), and one choice's answer parsed
whole or streamed (stream.py)."""

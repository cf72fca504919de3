"""Policy model, strict YAML loading and validation, and evaluation for an identity."""

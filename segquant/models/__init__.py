"""Built-in model testbeds (tiny diffusers configs)."""

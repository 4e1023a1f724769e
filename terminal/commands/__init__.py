"""`canteen-terminal`: one module per command group."""

"""Reference county server and county IT tools (canteen-county)."""

"""The terminal's one way to reach the county: transport, provisioning, update fetch."""

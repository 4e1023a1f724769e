"""The staff and cadre screen: a local page fed by server-sent events."""

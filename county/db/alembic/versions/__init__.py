"""The county database's revisions, oldest first: each is frozen once released."""

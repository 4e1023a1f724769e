"""The running terminal: daemon, decision worker, systemd notify, status socket, selftest."""

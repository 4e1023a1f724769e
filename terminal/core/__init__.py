"""The decision core: tokens, policy, checkout, clock, desk, reasons, events.

No device, network or database imports.
"""

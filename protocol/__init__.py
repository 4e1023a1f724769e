"""The formats terminal and county share: no device, network or database I/O."""

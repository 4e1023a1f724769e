"""Hardware simulator for technicians (hw-sim): issuer, phones, camera, card reader, county.

This package owns everything that plays a part the terminal talks to, so a
terminal can be installed, checked and load-tested without the real parts:
``wallet`` and ``population`` (issuer keys, cadres, credentials, cards and list
files; the token bytes come from protocol/issue.py), ``phone`` (wallet files that
draw codes), ``render`` (pictures of a phone showing a code), ``camera`` (an MJPEG
camera on 127.0.0.1), ``reader`` and ``pn532`` (a serial card reader on a pty),
``county`` (the reference county server behind a fault-injecting proxy),
``scenario/`` (the lunch-rush scenario: clock, plan, model, canteen, lunch, record,
report) and ``cli`` (the hw-sim command, one table of commands). Its libraries
come with the ``[hwsim]`` extra (setup.cfg). Nothing in terminal/ or protocol/
imports it (tests/test_layers.py): the terminal only verifies, and nothing here is
hardened against hostile input. Importing the package imports no device library;
import the module you need.
"""

CAMERA_PORT = 8766  # hw-sim camera's default port: http://127.0.0.1:8766/stream.mjpg

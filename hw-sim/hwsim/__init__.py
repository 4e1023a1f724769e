"""Hardware simulator for technicians (hw-sim): issuer, phones, camera, card reader, county.

This package owns everything that plays a part the terminal talks to, so a
terminal can be installed, checked and load-tested without the real parts:
``wallet`` and ``population`` (issuer keys, cadres, credentials, cards and list
files), ``phone`` (wallet files that draw codes), ``render`` (pictures of a
phone showing a code), ``camera`` (an MJPEG camera on 127.0.0.1), ``reader``
and ``pn532`` (a serial card reader on a pty), and ``cli`` (the hw-sim
command). The terminal daemon must never import it: the terminal only
verifies, and nothing here is hardened against hostile input. Importing the
package imports no device library; import the module you need.
"""

CAMERA_PORT = 8766  # hw-sim camera's default port: http://127.0.0.1:8766/stream.mjpg

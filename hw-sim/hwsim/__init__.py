"""Hardware simulator for technicians (hw-sim): issuer, phones, camera, card reader, county."""

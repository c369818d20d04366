"""Drivers for the box's I2C/GPIO parts (touch surfaces, ADCs, encoders, OLED), each behind a
swappable backend with a register-level simulator. Arrives with the hardware issue (#4); the
engine already takes touch and control input through ``device.controls.Controls``."""

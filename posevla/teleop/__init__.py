"""Teleoperation with GELLO-style leader arms (Dynamixel servos on USB serial)."""

"""The bottom layer: what every other package may use and which imports nothing of semivit above it
(device and distributed info, atomic I/O and checkpoints, the EMA, the run folder)."""

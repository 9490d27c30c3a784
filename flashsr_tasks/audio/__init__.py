"""Audio files: decoding sources, writing outputs, what a container header says, sinc resampling
to 48 kHz and the two-band crossover. Importing the package loads nothing heavy."""

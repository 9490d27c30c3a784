"""FlashSR on a device: the library, its weights, windows and cross-fades, the dynamic batcher, the
fast path, the input low-pass, random weights for tests. Only the model path imports torch."""

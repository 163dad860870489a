"""hw3: does BatchNorm make a ConvNet's loss smoother? The engine is plain PyTorch."""

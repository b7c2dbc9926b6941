"""Bottom-up networks (ResNet, slimmable ResNet-50), the FPN and their FLOP counts."""

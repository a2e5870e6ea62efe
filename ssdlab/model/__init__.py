"""The SSD model: cfg-defined backbones, priors, box coding, heads, loss and post-processing."""

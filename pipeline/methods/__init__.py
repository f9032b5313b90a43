"""One module per method; each turns cached arrays into component logits."""

"""More than one process: torch.distributed for compressed completion and fine-tuning."""

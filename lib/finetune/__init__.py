"""Step 3, fine-tuning: the diffusion model, the DreamBooth trainer, active gating, multi-process training, tracking."""

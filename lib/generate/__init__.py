"""Step 4, generation: synthetic sets from a fine-tuned model and the reference generators."""

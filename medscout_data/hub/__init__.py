"""Publishing the bench: the dataset card and the staged, checked upload to the Hugging Face Hub."""

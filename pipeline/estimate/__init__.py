"""What a run will take: time and money from the bench figures, recipes scaled to a dataset."""

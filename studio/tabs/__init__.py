"""One module per tab (and its view helpers): Dataset, Modes & cost, Training, Playground, machine check."""

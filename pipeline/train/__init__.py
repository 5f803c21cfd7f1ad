"""Training: packed samples, the training forward and loss, one phase's loop, the workflow of phases, jobs and their lock."""

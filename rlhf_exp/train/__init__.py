"""Training loops: the online loop shared by the RL objectives, and the offline ones."""

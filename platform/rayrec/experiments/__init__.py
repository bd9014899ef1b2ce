"""Online experiments: A/B tests and team-draft interleaving in serving, the impression log, their
analysis, and a simulator that measures how many users each method needs."""

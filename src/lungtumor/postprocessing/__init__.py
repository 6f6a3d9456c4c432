"""Rules applied to a predicted mask; each has a record in docs/decisions/."""

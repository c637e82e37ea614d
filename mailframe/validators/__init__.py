"""Built-in recipient validators, each an IRecipientValidator provider."""

"""Built-in delivery backends, each an IDeliveryBackend provider."""

"""The notification domain: recipients, templates, notifications, providers, and the API and views that trigger them."""

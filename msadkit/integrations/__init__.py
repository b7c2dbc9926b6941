"""Optional integrations with other frameworks; the core package never imports them."""

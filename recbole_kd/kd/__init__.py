"""Knowledge distillation: losses (one per file, registered by name), gate, teacher zoo and
cache, and the distillation trainer."""

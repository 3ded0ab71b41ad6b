"""Stage 4a: provision what the plan and the render describe, as Pulumi ComponentResources per target."""
